#!/usr/bin/env bash
# kthw: etcd {{ member }}: leave the cluster before this controller's VM is deleted.
# Pulumi runs it when the controller leaves controllerCount (and on destroy), before the VM goes:
# `member remove` first, so the remaining members never count a member that will not return
# towards their quorum. The last member has nobody to leave; a cluster where no member answers
# at all has no membership left to change.
set -euo pipefail

name="{{ member }}"
peer_url="{{ peer_url }}"
# This member and every other controller it knew of, comma-separated.
endpoints="{{ endpoints }}"
etcdctl="{{ etcdctl }}"
export ETCDCTL_CACERT="{{ ca_file }}" ETCDCTL_CERT="{{ cert_file }}" ETCDCTL_KEY="{{ key_file }}"
export ETCDCTL_DIAL_TIMEOUT=3s ETCDCTL_COMMAND_TIMEOUT=20s
# Every etcdctl call ends by itself: etcdctl's own dial and command timeouts, and `timeout` around
# the whole process in case it hangs anyway.
ctl() { timeout --kill-after=5 "{{ etcdctl_timeout }}" "${etcdctl}" "$@"; }

log() { echo "kthw-etcd-leave: ${name}: $*" >&2; }

if ! members="$(ctl --endpoints="${endpoints}" member list -w simple)"; then
  any=0
  IFS=',' read -ra each <<< "${endpoints}"
  for endpoint in "${each[@]}"; do
    if ctl --endpoints="${endpoint}" endpoint status >/dev/null 2>&1; then any=1; fi
  done
  if [ "${any}" = 1 ]; then
    log "the cluster has no quorum: refusing to remove ${name} now (restore quorum, then run again)"
    exit 1
  fi
  log "no etcd member answers: nothing to leave"
  exit 0
fi
id="$(awk -F', ' -v url="${peer_url}" '$4 == url { print $1 }' <<< "${members}")"
if [ -z "${id}" ]; then
  log "not a member of the cluster: nothing to do"
  exit 0
fi
if [ "$(wc -l <<< "${members}")" -le 1 ]; then
  log "the last member: nothing to leave"
  exit 0
fi
deadline=$((SECONDS + ${KTHW_ETCD_LEAVE_TIMEOUT:-120}))
# etcd refuses a reconfiguration until every member has been connected for a few seconds
# ("unhealthy cluster"), e.g. right after a member joined.
until ctl --endpoints="${endpoints}" member remove "${id}" >&2; do
  # The removal may have gone through with its answer lost (this member's own server stops under
  # the request): a membership without the id means it is done, and asking again would only fail.
  if listed="$(ctl --endpoints="${endpoints}" member list -w simple 2>/dev/null)" \
    && ! awk -F', ' -v id="${id}" '$1 == id { found = 1 } END { exit !found }' <<< "${listed}"; then
    break
  fi
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    log "member remove ${id} did not succeed in time; the VM is kept"
    exit 1
  fi
  sleep 2
done
log "removed ${id} from the cluster"
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  timeout --kill-after=5 "{{ systemctl_timeout }}" systemctl disable --now etcd.service etcd-backup.timer >/dev/null 2>&1 || true
fi
