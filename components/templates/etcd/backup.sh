#!/usr/bin/env bash
# kthw: etcd {{ member }}: snapshot this member's data (etcd-backup.timer runs it), keep the newest
# {{ keep }} snapshots on the etcd disk, and copy each to gs://BUCKET when a bucket is set. The
# upload authenticates as the VM's service account (token from the metadata server), which may
# only create objects in that bucket.
set -euo pipefail

name="{{ member }}"
endpoint="{{ local_url }}"
backup_dir="{{ backup_dir }}"
keep="{{ keep }}"
bucket="{{ bucket }}"
etcdctl="{{ etcdctl }}"
export ETCDCTL_CACERT="{{ ca_file }}" ETCDCTL_CERT="{{ cert_file }}" ETCDCTL_KEY="{{ key_file }}"
export ETCDCTL_DIAL_TIMEOUT=5s ETCDCTL_COMMAND_TIMEOUT=120s
# Every etcdctl call ends by itself: etcdctl's own dial and command timeouts, and `timeout` around
# the whole process in case it hangs anyway.
ctl() { timeout --kill-after=5 "{{ etcdctl_timeout }}" "${etcdctl}" "$@"; }
metadata="http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"

install -d -m 0700 "${backup_dir}"
snapshot="${backup_dir}/${name}-$(date -u +%Y%m%dT%H%M%SZ).db"
ctl --endpoints="${endpoint}" snapshot save "${snapshot}.part" >/dev/null
mv "${snapshot}.part" "${snapshot}"
echo "kthw-etcd-backup: ${name}: saved ${snapshot}"

# Retention by count: newest first, everything past the newest ${keep} goes.
find "${backup_dir}" -maxdepth 1 -name "${name}-*.db" -printf '%f\n' | sort -r | tail -n +"$((keep + 1))" \
  | while read -r old; do rm -f "${backup_dir}/${old}"; done
rm -f "${backup_dir}"/*.part

if [ -n "${bucket}" ]; then
  token="$(curl -fsS --connect-timeout {{ probe_connect_timeout }} --max-time {{ probe_max_time }} -H 'Metadata-Flavor: Google' "${metadata}" \
    | sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')"
  [ -n "${token}" ] || { echo "kthw-etcd-backup: ${name}: no access token from the metadata server" >&2; exit 1; }
  object="etcd/${name}/$(basename "${snapshot}")"
  curl -fsS --connect-timeout {{ curl_connect_timeout }} --max-time {{ curl_max_time }} \
    --retry {{ curl_retries }} --retry-delay {{ curl_retry_delay }} -X POST --data-binary "@${snapshot}" \
    -H "Authorization: Bearer ${token}" -H 'Content-Type: application/octet-stream' \
    "https://storage.googleapis.com/upload/storage/v1/b/${bucket}/o?uploadType=media&name=${object//\//%2F}" >/dev/null
  echo "kthw-etcd-backup: ${name}: copied to gs://${bucket}/${object}"
fi
