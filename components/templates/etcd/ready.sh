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
# Every etcdctl call ends by itself: etcdctl's own dial and command timeouts, and `timeout` around
# the whole process in case it hangs anyway.
ctl() { timeout --kill-after=5 "{{ etcdctl_timeout }}" "${etcdctl}" "$@"; }
timeout="${KTHW_ETCD_READY_TIMEOUT:-{{ timeout }}}"
# A healthy member proves the cluster exists: from now on this controller never founds another
# one (kthw-etcd-membership reads these).
markers=({{ founded_markers }})
deadline=$((SECONDS + timeout))

# One field of `endpoint status -w fields` at an endpoint ("RaftIndex", "Leader", ...).
status_field() {
  ctl --endpoints="$1" endpoint status -w fields | awk -v key="\"$2\"" '$1 == key { print $3; exit }'
}

# One field of the status held in ${fields}.
field() { awk -v key="\"$1\"" '$1 == key { print $3; exit }' <<< "${fields}"; }

# The client URL of the member with this (decimal) ID, from `member list -w fields`.
client_url_of() {
  ctl --endpoints="${peers:-${local_url}}" member list -w fields \
    | awk -v id="$1" '$1 == "\"ID\"" { cur = $3 } $1 == "\"ClientURL\"" && cur == id { print $3; exit }' | tr -d '"'
}

state="starting"
while :; do
  # By field name: the columns of `-w simple` differ between etcd 3.5 and 3.6.
  fields="$(ctl --endpoints="${local_url}" endpoint status -w fields 2>/dev/null || true)"
  if [ -n "${fields}" ]; then
    member_id="$(field MemberID)"
    learner="$(field IsLearner)"
    applied="$(field RaftAppliedIndex)"
    leader="$(field Leader)"
    id="$(printf '%x' "${member_id:-0}")"  # member promote takes the ID in hex
    leader_url="${local_url}"
    if [ "${leader}" != "${member_id}" ]; then
      leader_url="$(client_url_of "${leader}" 2>/dev/null || true)"
    fi
    target="$(status_field "${leader_url:-${local_url}}" RaftIndex 2>/dev/null || true)"
    if [ -z "${target}" ] || [ -z "${applied}" ] || [ "${applied}" -lt "${target}" ]; then
      state="behind the leader (applied ${applied:-?} of ${target:-?})"
    elif [ "${learner}" = true ]; then
      state="a learner, caught up: promoting ${id}"
      if ctl --endpoints="${peers}" member promote "${id}" >&2; then
        continue
      fi
    # `endpoint health` does a quorum read through this member: it is a voting, connected member.
    elif ctl --endpoints="${local_url}" endpoint health >/dev/null 2>&1; then
      for marker in "${markers[@]}"; do
        mkdir -p "$(dirname "${marker}")" && touch "${marker}"
      done
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
