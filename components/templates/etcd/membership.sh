#!/usr/bin/env bash
# kthw: etcd {{ member }}: decide how this member starts (etcd.service runs this as ExecStartPre).
# The answer goes to an environment file etcd reads: ETCD_INITIAL_CLUSTER and
# ETCD_INITIAL_CLUSTER_STATE. Decided at every start, from what is true now:
#   1. a data dir that holds a member (member/) starts as that member; etcd then ignores
#      --initial-cluster*, so a replaced VM on its kept etcd disk comes back as itself;
#   2. an empty data dir joins the running cluster found at the other members' client URLs:
#      `member add` first (unless a previous attempt already added it; as a learner when the
#      cluster has one member), then start `existing`; the ready step promotes a learner;
#   3. only when no other member answers at all, and only if this controller never saw a cluster
#      (no "founded" marker on its boot disk nor on its etcd disk), does the founder ({{ founder }})
#      start a new cluster of one; the others grow it one `member add` at a time. Any other member,
#      and a founder whose cluster exists somewhere, waits (etcd retries) until a quorum answers.
#      So a founder that lost its etcd disk while the others are still down (a power loss, any boot
#      order) joins their cluster once it is back instead of founding a second one.
# A data dir left by a member the cluster has since removed is moved aside, and the member
# joins again as new; a member the cluster still lists as started but whose data is gone is
# removed and added again (etcd refuses an old member ID with an empty log).
set -euo pipefail

name="{{ member }}"
peer_url="{{ peer_url }}"
data_dir="{{ data_dir }}"
env_file="{{ env_file }}"
founder="{{ founder }}"
# The other controllers' client URLs, comma-separated (empty for a single controller).
peers="{{ peers }}"
etcdctl="{{ etcdctl }}"
export ETCDCTL_CACERT="{{ ca_file }}" ETCDCTL_CERT="{{ cert_file }}" ETCDCTL_KEY="{{ key_file }}"
export ETCDCTL_DIAL_TIMEOUT=3s ETCDCTL_COMMAND_TIMEOUT=10s
# Every etcdctl call ends by itself: etcdctl's own dial and command timeouts, and `timeout` around
# the whole process in case it hangs anyway.
ctl() { timeout --kill-after=5 "{{ etcdctl_timeout }}" "${etcdctl}" "$@"; }
# How long `member add` retries while the cluster is still settling a previous change.
add_timeout="${KTHW_ETCD_ADD_TIMEOUT:-120}"
# Written once this controller has been part of a cluster (a healthy member, or a start from
# data): one on the boot disk, one on the etcd disk, so losing either disk keeps the other.
markers=({{ founded_markers }})

log() { echo "kthw-etcd-membership: ${name}: $*" >&2; }

write_env() {
  local state="$1" cluster="$2" tmp
  tmp="$(mktemp "${env_file}.XXXXXX")"
  printf 'ETCD_INITIAL_CLUSTER_STATE=%s\nETCD_INITIAL_CLUSTER=%s\n' "${state}" "${cluster}" > "${tmp}"
  mv -f "${tmp}" "${env_file}"
  log "starts with --initial-cluster-state ${state} --initial-cluster ${cluster}"
}

# `member list` of the running cluster as "id started name peer-urls" lines; fails without quorum.
list_members() {
  ctl --endpoints="${peers}" member list -w simple \
    | awk -F', ' '{ print $1, $2, ($3 == "" ? "-" : $3), $4 }'
}

# Does any other member answer at all (with or without quorum)? `endpoint status` is local to
# the member asked, so it answers even when the cluster has lost its quorum.
any_peer_answers() {
  local endpoint pid
  local -a endpoints pids=()
  IFS=',' read -ra endpoints <<< "${peers}"
  # In parallel: at a fresh cluster's founding none of them exists yet, each costing a timeout.
  for endpoint in "${endpoints[@]}"; do
    ETCDCTL_DIAL_TIMEOUT=2s ETCDCTL_COMMAND_TIMEOUT=3s ctl --endpoints="${endpoint}" endpoint status &>/dev/null &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    if wait "${pid}"; then
      return 0
    fi
  done
  return 1
}

founded_before() {
  local marker
  for marker in "${markers[@]}"; do
    [ -e "${marker}" ] && return 0
  done
  return 1
}

mark_founded() {
  local marker
  for marker in "${markers[@]}"; do
    if ! { mkdir -p "$(dirname "${marker}")" && touch "${marker}"; }; then
      log "could not write ${marker}"
    fi
  done
}

# Ask whether anyone answers first, with a short timeout: at a fresh cluster's founding the
# other controllers do not exist yet, and a quorum read against them would wait out every timeout.
members=""
answered=false
if [ -n "${peers}" ] && any_peer_answers; then
  answered=true
  members="$(list_members 2>/dev/null)" || members=""
fi
mine="$(awk -v url="${peer_url}" '$4 == url || index($4, url ",") == 1' <<< "${members}")"

if [ -d "${data_dir}/member" ]; then
  if [ -z "${members}" ] || [ -n "${mine}" ]; then
    mark_founded
    # etcd ignores both values when it restarts from its data; they are set so nothing is left
    # to a default.
    write_env existing "${name}=${peer_url}"
    exit 0
  fi
  aside="${data_dir}.removed-$(date +%Y%m%dT%H%M%S)"
  log "the cluster no longer lists ${peer_url}: its old data moves to ${aside}, and it joins as a new member"
  mv "${data_dir}" "${aside}"
fi

if [ -n "${members}" ]; then
  if [ -n "${mine}" ]; then
    read -r id started _ _ <<< "${mine}"
    if [ "${started}" = started ]; then
      log "the cluster lists ${name} (${id}) as started but its data dir is empty: removing it to add it again"
      ctl --endpoints="${peers}" member remove "${id}" >&2
      mine=""
    else
      log "already added to the cluster as ${id} (a previous start did not finish): joining"
    fi
  fi
  if [ -n "${mine}" ]; then
    cluster="$(awk -v me="${name}" -v url="${peer_url}" '{
        n = ($4 == url) ? me : $3
        printf "%s%s=%s", sep, n, $4; sep = ","
      }' <<< "${members}")"
  else
    deadline=$((SECONDS + add_timeout))
    # A cluster of one adds its second member as a learner: a voting second member would leave
    # it without a quorum (1 of 2) until the joiner runs; a learner does not vote until the ready
    # step promotes it, once caught up. A larger cluster keeps its quorum through a voting add,
    # and a learner would refuse the requests of clients that already list it (API servers).
    learner=()
    as="a voting member"
    # Counted without this member's own (just removed) entry.
    if [ "$(awk -v url="${peer_url}" '$4 != url' <<< "${members}" | wc -l)" -eq 1 ]; then
      learner=(--learner)
      as="a learner"
    fi
    # etcd refuses an add until every voting member has been connected for a few seconds: retry.
    until added="$(ctl --endpoints="${peers}" member add "${name}" --peer-urls="${peer_url}" "${learner[@]}")"; do
      if [ "${SECONDS}" -ge "${deadline}" ]; then
        log "member add did not succeed within ${add_timeout}s"
        exit 1
      fi
      sleep 2
    done
    log "${added%%$'\n'*} as ${as}"
    # Taken from the add's own answer, which lists every member with this one named.
    cluster="$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<< "${added}")"
    [ -n "${cluster}" ] || { log "member add printed no ETCD_INITIAL_CLUSTER: ${added}"; exit 1; }
  fi
  write_env existing "${cluster}"
  exit 0
fi

if [ "${answered}" = true ]; then
  log "other members answer but the cluster has no quorum; not founding a new one (etcd retries)"
  exit 1
fi
if [ "${founder}" = true ]; then
  if founded_before; then
    log "no etcd member answers at ${peers}, and this controller has been part of a cluster before (${markers[*]}): not founding a second one; it joins once a quorum answers (etcd retries)"
    exit 1
  fi
  write_env new "${name}=${peer_url}"
  exit 0
fi
log "no etcd member answers at ${peers}; the founder starts the cluster first (etcd retries)"
exit 1
