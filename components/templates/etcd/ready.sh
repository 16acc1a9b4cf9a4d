#!/usr/bin/env bash
# kthw: etcd {{ member }}: wait until this member is healthy and caught up with the leader.
# The next controller's etcd restart or VM replacement waits on this, so the cluster never has
# more than one member down or behind at a time.
set -euo pipefail

name="{{ member }}"
local_url="{{ local_url }}"
etcdctl="{{ etcdctl }}"
export ETCDCTL_CACERT="{{ ca_file }}" ETCDCTL_CERT="{{ cert_file }}" ETCDCTL_KEY="{{ key_file }}"
export ETCDCTL_DIAL_TIMEOUT=3s ETCDCTL_COMMAND_TIMEOUT=10s
timeout="${KTHW_ETCD_READY_TIMEOUT:-{{ timeout }}}"
deadline=$((SECONDS + timeout))

# One field of `endpoint status -w fields` at an endpoint ("RaftIndex", "Leader", ...).
status_field() {
  "${etcdctl}" --endpoints="$1" endpoint status -w fields | awk -v key="\"$2\"" '$1 == key { print $3; exit }'
}

# The client URL of the member with this (decimal) ID, from `member list -w fields`.
client_url_of() {
  "${etcdctl}" --endpoints="${local_url}" member list -w fields \
    | awk -v id="$1" '$1 == "\"ID\"" { cur = $3 } $1 == "\"ClientURL\"" && cur == id { print $3; exit }'
}

state="starting"
while :; do
  # `endpoint health` does a quorum read through this member: it is a voting, connected member.
  if "${etcdctl}" --endpoints="${local_url}" endpoint health >/dev/null 2>&1; then
    leader="$(status_field "${local_url}" Leader || true)"
    leader_url="$(client_url_of "${leader}" 2>/dev/null | tr -d '"' || true)"
    target="$(status_field "${leader_url:-${local_url}}" RaftIndex 2>/dev/null || true)"
    applied="$(status_field "${local_url}" RaftAppliedIndex 2>/dev/null || true)"
    if [ -n "${target}" ] && [ -n "${applied}" ] && [ "${applied}" -ge "${target}" ]; then
      echo "kthw: ${name}: etcd healthy and caught up (applied ${applied}, leader's index ${target})"
      exit 0
    fi
    state="behind the leader (applied ${applied:-?} of ${target:-?})"
  fi
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "kthw: ${name}: etcd is not healthy and caught up after ${timeout}s: ${state}" >&2
    journalctl -u etcd -n 30 --no-pager >&2 2>/dev/null || true
    exit 1
  fi
  sleep 1
done
