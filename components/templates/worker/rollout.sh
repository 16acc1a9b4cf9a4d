#!/usr/bin/env bash
# kthw: {{ node }}: drain or uncordon it around its restarts (rollout).
# A worker's services restart only while it is drained, and at most {{ slots }} worker(s) at a time.
# Runs on a controller with the admin's credentials (a worker's own may neither evict pods nor
# take leases), as two steps around the worker's restarting steps:
#   drain    (before them): skip a node that is not registered yet (a new worker: nothing runs on
#            it) or that already runs exactly this configuration; otherwise take an upgrade slot
#            (a Lease {{ namespace }}/{{ prefix }}N, re-entrant for this node), cordon the node and
#            drain it, honouring PodDisruptionBudgets, within {{ drain_seconds }}s;
#   uncordon (after its ready step): uncordon the node if this program cordoned it, record the
#            configuration it now runs, and give the slot back.
# A drain that does not finish fails, naming the pods left; the node stays cordoned and keeps its
# slot, so no other worker starts while it is out. A slot whose holder stopped renewing it is taken
# over after {{ lease_seconds }}s only if the holder is no longer cordoned by this program.
set -euo pipefail

node="{{ node }}"
action="{{ action }}"
# What the worker's restarting steps will install: the digest of their files.
fingerprint="{{ fingerprint }}"
namespace="{{ namespace }}"
prefix="{{ prefix }}"
slots={{ slots }}
lease_seconds={{ lease_seconds }}
# A waiter gives up when no slot changed hands for this long (a holder's whole turn is bounded by it).
stall_seconds={{ stall_seconds }}
drain_seconds={{ drain_seconds }}
kubectl_timeout={{ kubectl_timeout }}
timeout={{ timeout_seconds }}
deadline=$((SECONDS + timeout))
# Annotations on the Node: the configuration it runs, and that this program (not an admin) cordoned it.
applied_key="{{ applied_annotation }}"
cordoned_key="{{ cordoned_annotation }}"

log() { echo "kthw: ${node}: ${action}: $*" >&2; }
fail() {
  echo "kthw: ${node}: ${action}: $*" >&2
  exit 1
}

# Every kubectl call is bounded: its own request timeout, and `timeout` around the process.
k() {
  timeout --kill-after=5 "$((kubectl_timeout + 5))" {{ kubectl }} --request-timeout="${kubectl_timeout}s" "$@"
}

# A Lease as JSON: name, holder (empty: free), and the resourceVersion it replaces (empty: a create).
lease_json() {
  local now rv=""
  now="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
  [ -z "$3" ] || rv=",\"resourceVersion\":\"$3\""
  printf '{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"%s","namespace":"%s"%s},' \
    "$1" "${namespace}" "${rv}"
  printf '"spec":{"holderIdentity":"%s","leaseDurationSeconds":%s,"acquireTime":"%s","renewTime":"%s"}}\n' \
    "$2" "${lease_seconds}" "${now}" "${now}"
}

# Reads slot $1 into slot_rv, slot_holder, slot_renew and slot_duration (the holder's own lease
# duration). Returns 1 if it does not exist, 2 on an error.
read_slot() {
  local out
  if ! out="$(k -n "${namespace}" get lease "$1" \
    -o 'jsonpath={.metadata.resourceVersion}|{.spec.holderIdentity}|{.spec.renewTime}|{.spec.leaseDurationSeconds}' 2>&1)"; then
    case "${out}" in *NotFound*) return 1 ;; esac
    log "could not read lease ${namespace}/$1: ${out}"
    return 2
  fi
  IFS='|' read -r slot_rv slot_holder slot_renew slot_duration <<< "${out}"
}

expired() {
  local renewed
  [ -n "${slot_renew}" ] || return 0
  renewed="$(date -u -d "${slot_renew}" +%s 2>/dev/null)" || return 0
  [ $((renewed + ${slot_duration:-${lease_seconds}})) -lt "$(date -u +%s)" ]
}

# Is node $1 still cordoned by this program (its turn not finished)? An unreadable answer counts as yes.
cordoned_by_us() {
  local out
  if ! out="$(k get node "$1" -o "jsonpath={.metadata.annotations.${cordoned_key//./\\.}}" 2>&1)"; then
    case "${out}" in *NotFound*) return 1 ;; esac
    return 0
  fi
  [ "${out}" = true ]
}

# Write slot $1 for holder $2 over resourceVersion $3 (empty: create). Fails on a conflict.
write_slot() {
  if [ -z "$3" ]; then
    lease_json "$1" "$2" "" | k create -f - >/dev/null 2>&1
  else
    lease_json "$1" "$2" "$3" | k replace -f - >/dev/null 2>&1
  fi
}

# One pass over the slots: renew this node's own, else take a free or abandoned one. Sets `held`
# and returns 0, or lists the holders in `holders` and returns 1.
take_slot() {
  local i name status pass
  holders=()
  for pass in own any; do
    for i in $(seq 0 $((slots - 1))); do
      name="${prefix}${i}"
      status=0
      read_slot "${name}" || status=$?
      if [ "${pass}" = own ]; then
        if [ "${status}" = 0 ] && [ "${slot_holder}" = "${node}" ] && write_slot "${name}" "${node}" "${slot_rv}"; then
          held="${name}"
          return 0
        fi
        continue
      fi
      case "${status}" in
        1)
          if write_slot "${name}" "${node}" ""; then
            held="${name}"
            return 0
          fi
          continue
          ;;
        2) continue ;;
      esac
      if [ -z "${slot_holder}" ] || { expired && ! cordoned_by_us "${slot_holder}"; }; then
        if write_slot "${name}" "${node}" "${slot_rv}"; then
          held="${name}"
          return 0
        fi
        continue
      fi
      holders+=("${slot_holder} (${name}, since ${slot_renew})")
    done
  done
  return 1
}

give_back() {
  local i name status attempt
  for i in $(seq 0 $((slots - 1))); do
    name="${prefix}${i}"
    for attempt in 1 2 3 4 5; do
      status=0
      read_slot "${name}" || status=$?
      [ "${status}" != 1 ] || break
      [ "${status}" = 0 ] || { sleep 2; continue; }
      [ "${slot_holder}" = "${node}" ] || break
      if write_slot "${name}" "" "${slot_rv}"; then
        log "gave back upgrade slot ${namespace}/${name}"
        break
      fi
      [ "${attempt}" -lt 5 ] || fail "could not give back upgrade slot ${namespace}/${name}"
      sleep 1
    done
  done
}

# Sets registered (true/false) and, for a registered node, unschedulable, applied and cordoned.
read_node() {
  local out
  registered=false
  until out="$(k get node "${node}" -o "jsonpath={.spec.unschedulable}|{.metadata.annotations.${applied_key//./\\.}}|{.metadata.annotations.${cordoned_key//./\\.}}" 2>&1)"; do
    case "${out}" in *NotFound*) return 0 ;; esac
    [ "${SECONDS}" -lt "${deadline}" ] || fail "could not read node ${node}: ${out}"
    sleep 3
  done
  registered=true
  IFS='|' read -r unschedulable applied cordoned <<< "${out}"
}

# The pods still on the node and the budgets that allow no disruption now, for the failure message.
pods_left() {
  k get pods --all-namespaces --field-selector "spec.nodeName=${node}" \
    -o 'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}[{.status.phase}] {end}' 2>&1 || true
}
blocking_budgets() {
  k get poddisruptionbudgets --all-namespaces \
    -o 'jsonpath={range .items[?(@.status.disruptionsAllowed==0)]}{.metadata.namespace}/{.metadata.name} {end}' 2>&1 || true
}

drain() {
  read_node
  if [ "${registered}" = false ]; then
    echo "kthw: ${node}: drain: not registered yet (a new worker): nothing to drain"
    return 0
  fi
  if [ "${applied}" = "${fingerprint}" ] && [ "${cordoned}" != true ]; then
    echo "kthw: ${node}: drain: already runs this configuration: nothing to drain"
    return 0
  fi

  local since=${SECONDS} last="" seen
  held=""
  until take_slot; do
    seen="${holders[*]}"
    if [ "${seen}" != "${last}" ]; then
      log "waiting for an upgrade slot (at most ${slots} worker(s) at a time): held by ${seen}"
      last="${seen}"
      since=${SECONDS}
    fi
    # SECONDS counts whole seconds: more than the bound in them is at least the bound in time.
    if [ $((SECONDS - since)) -gt "${stall_seconds}" ] || [ "${SECONDS}" -ge "${deadline}" ]; then
      fail "no upgrade slot came free within ${stall_seconds}s: held by ${seen}. A worker whose turn failed keeps its slot while it stays cordoned: fix it and run pulumi up again, or uncordon it and delete its Lease in ${namespace}"
    fi
    sleep 5
  done
  log "holds upgrade slot ${namespace}/${held}"

  if [ "${unschedulable}" != true ] || [ "${cordoned}" = true ]; then
    # Marked first: a run that stops between the two still knows the cordon is its own.
    k annotate --overwrite node "${node}" "${cordoned_key}=true" >/dev/null || fail "could not annotate node ${node}"
    k cordon "${node}" >/dev/null || fail "could not cordon node ${node}"
  else
    log "was cordoned by someone else before: it stays cordoned afterwards"
  fi
  local out status=0
  out="$(timeout --kill-after=10 "$((drain_seconds + 30))" {{ kubectl }} --request-timeout="${kubectl_timeout}s" \
    drain "${node}" --ignore-daemonsets --delete-emptydir-data --timeout="${drain_seconds}s" 2>&1)" || status=$?
  if [ "${status}" != 0 ]; then
    fail "could not drain ${node} within ${drain_seconds}s; it stays cordoned and keeps its upgrade slot. Pods still on it: $(pods_left). PodDisruptionBudgets allowing no disruption: $(blocking_budgets). kubectl drain said: $(tail -n 4 <<< "${out}" | tr '\n' ' ')"
  fi
  echo "kthw: ${node}: drain: cordoned and drained (upgrade slot ${held})"
}

uncordon() {
  read_node
  [ "${registered}" = true ] || fail "node ${node} is not registered"
  local state=schedulable
  if [ "${cordoned}" = true ]; then
    k uncordon "${node}" >/dev/null || fail "could not uncordon node ${node}"
    state=uncordoned
  elif [ "${unschedulable}" = true ]; then
    state="left cordoned: someone else cordoned it"
  fi
  # One patch: the configuration it runs, and the cordon mark gone.
  k annotate --overwrite node "${node}" "${applied_key}=${fingerprint}" "${cordoned_key}-" >/dev/null \
    || fail "could not annotate node ${node}"
  give_back
  echo "kthw: ${node}: uncordon: ${state}; runs configuration ${fingerprint:0:12}"
}

case "${action}" in
  drain) drain ;;
  uncordon) uncordon ;;
  *) fail "unknown action" ;;
esac
