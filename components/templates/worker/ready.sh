#!/usr/bin/env bash
# kthw: {{ node }}: wait until this worker's services run and its node is Ready,
# so `pulumi up` ends with a usable worker or names the one that is not. Every call and the wait
# as a whole are bounded, so an API that never answers fails the step instead of hanging it.
set -euo pipefail

node="{{ node }}"
units=({{ units }})
timeout={{ timeout_seconds }}
kubectl_timeout={{ kubectl_timeout }}
systemctl_timeout={{ systemctl_timeout }}
deadline=$((SECONDS + timeout))

systemctl_root() {
  timeout --kill-after=5 "${systemctl_timeout}" sudo systemctl "$@"
}

fail() {
  echo "kthw: ${node}: worker start: $*" >&2
  for unit in "${units[@]}"; do
    systemctl_root status --no-pager --lines=0 "${unit}" >&2 || true
    sudo journalctl -u "${unit}" -n 25 --no-pager >&2 || true
  done
  exit 1
}

# containerd runs these for every pod sandbox (loopback for lo, the conflist's chain for eth0); a
# missing one shows up only as pods stuck in ContainerCreating, so name it here.
for plugin in {{ cni_plugins }}; do
  [ -x "{{ cni_bin_dir }}/${plugin}" ] || fail "CNI plugin ${plugin} is missing from {{ cni_bin_dir }}"
done

for unit in "${units[@]}"; do
  until systemctl_root is-active --quiet "${unit}"; do
    [ "${SECONDS}" -lt "${deadline}" ] || fail "${unit} is not active after ${timeout}s"
    sleep 2
  done
done

# The kubelet's own health, not only its Node object: right after a restart the Node still reads
# Ready from the previous kubelet's heartbeat, while the new one does not serve exec and logs yet.
health=""
until health="$(curl -sS --connect-timeout 2 --max-time 5 "{{ kubelet_healthz }}" 2>&1)" && [ "${health}" = ok ]; do
  [ "${SECONDS}" -lt "${deadline}" ] || fail "the kubelet's {{ kubelet_healthz }} is not ok after ${timeout}s: ${health:-no answer}"
  sleep 2
done

# The node authorizer lets a kubelet read its own Node object, so its own kubeconfig can check that
# the node registered and reports Ready (containerd and the CNI conf work).
ready=""
until [ "${ready}" = "True" ]; do
  ready="$(timeout --kill-after=5 "${kubectl_timeout}" sudo /usr/local/bin/kubectl --kubeconfig {{ kubeconfig }} \
    get node "${node}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
  [ "${ready}" != "True" ] || break
  [ "${SECONDS}" -lt "${deadline}" ] \
    || fail "node ${node} is not Ready in the API server after ${timeout}s (Ready=${ready:-unregistered})"
  sleep 3
done
echo "kthw: ${node}: worker start: ${units[*]} active; kubelet healthy; node Ready"
