#!/usr/bin/env bash
# kthw: etcd {{ member }}: restore a snapshot into this member's data dir, as a new cluster of one.
# Usage (etcd stopped on every controller, see README "Restoring etcd"): kthw-etcd-restore SNAPSHOT
# The other controllers then join it one by one with empty data dirs (kthw-etcd-membership does
# the `member add`), exactly as a grow does.
set -euo pipefail

name="{{ member }}"
peer_url="{{ peer_url }}"
data_dir="{{ data_dir }}"
etcdutl="{{ etcdutl }}"
snapshot="${1:?usage: $0 SNAPSHOT}"

[ -f "${snapshot}" ] || { echo "kthw-etcd-restore: ${name}: no snapshot at ${snapshot}" >&2; exit 1; }
if [ -e "${data_dir}" ]; then
  aside="${data_dir}.before-restore-$(date +%Y%m%dT%H%M%S)"
  mv "${data_dir}" "${aside}"
  echo "kthw-etcd-restore: ${name}: the old data dir is kept at ${aside}" >&2
fi
"${etcdutl}" snapshot restore "${snapshot}" \
  --name "${name}" \
  --initial-cluster "${name}=${peer_url}" \
  --initial-advertise-peer-urls "${peer_url}" \
  --initial-cluster-token "{{ cluster_token }}" \
  --data-dir "${data_dir}" >&2
echo "kthw-etcd-restore: ${name}: restored ${snapshot} into ${data_dir}; start etcd here first"
