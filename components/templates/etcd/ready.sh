#!/usr/bin/env bash
# kthw: etcd {{ member }}: wait until this member is a healthy voting member, caught up with the
# leader; a member that joined as a learner is promoted here once it has caught up. The next
# controller's etcd restart or VM replacement waits on this, so the cluster never has more than
# one member down or behind at a time.
set -euo pipefail

name="{{ member }}"
local_url="{{ local_url }}"
# The other controllers' client URLs (empty for a single controller): a learner cannot answer
# cluster-wide questions itself.
peers="{{ peers }}"
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
  "${etcdctl}" --endpoints="${peers:-${local_url}}" member list -w fields \
    | awk -v id="$1" '$1 == "\"ID\"" { cur = $3 } $1 == "\"ClientURL\"" && cur == id { print $3; exit }' | tr -d '"'
}

state="starting"
while :; do
  # endpoint, ID (hex), version, db size, is leader, is learner, raft term, raft index, applied index
  status="$("${etcdctl}" --endpoints="${local_url}" endpoint status -w simple 2>/dev/null || true)"
  if [ -n "${status}" ]; then
    IFS=',' read -r _ id _ _ _ learner _ _ applied _ <<< "${status// /}"
    fields="$("${etcdctl}" --endpoints="${local_url}" endpoint status -w fields 2>/dev/null || true)"
    leader="$(awk '$1 == "\"Leader\"" { print $3 }' <<< "${fields}")"
    leader_url="${local_url}"
    if [ "${leader}" != "$(awk '$1 == "\"MemberID\"" { print $3 }' <<< "${fields}")" ]; then
      leader_url="$(client_url_of "${leader}" 2>/dev/null || true)"
    fi
    target="$(status_field "${leader_url:-${local_url}}" RaftIndex 2>/dev/null || true)"
    if [ -z "${target}" ] || [ -z "${applied}" ] || [ "${applied}" -lt "${target}" ]; then
      state="behind the leader (applied ${applied:-?} of ${target:-?})"
    elif [ "${learner}" = true ]; then
      state="a learner, caught up: promoting ${id}"
      if "${etcdctl}" --endpoints="${peers}" member promote "${id}" >&2; then
        continue
      fi
    # `endpoint health` does a quorum read through this member: it is a voting, connected member.
    elif "${etcdctl}" --endpoints="${local_url}" endpoint health >/dev/null 2>&1; then
      echo "kthw: ${name}: etcd healthy and caught up (applied ${applied}, leader's index ${target})"
      exit 0
    else
      state="not healthy"
    fi
  fi
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "kthw: ${name}: etcd is not healthy and caught up after ${timeout}s: ${state}" >&2
    journalctl -u etcd -n 30 --no-pager >&2 2>/dev/null || true
    exit 1
  fi
  sleep 1
done
