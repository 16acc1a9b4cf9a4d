#!/usr/bin/env bash
# kthw: {{ node }}: wait until this controller's control plane serves: its services run and the
# local API server answers /healthz and /readyz (which covers its etcd connection), so `pulumi up`
# ends with a working API or names the node that has none.
set -euo pipefail

node="{{ node }}"
units=({{ units }})
kubectl="{{ kubectl }}"
# The admin kubeconfig carries the client certificate, so no key ever appears on a command line.
kubeconfig="{{ kubeconfig }}"
timeout={{ timeout_seconds }}
deadline=$((SECONDS + timeout))

fail() {
  echo "kthw: ${node}: control-plane health: $*" >&2
  for unit in "${units[@]}"; do
    sudo systemctl status --no-pager --lines=0 "${unit}" >&2 || true
    sudo journalctl -u "${unit}" -n 25 --no-pager >&2 || true
  done
  exit 1
}

wait_active() {
  local unit
  for unit in "${units[@]}"; do
    until sudo systemctl is-active --quiet "${unit}"; do
      [ "${SECONDS}" -lt "${deadline}" ] || fail "${unit} is not active after ${timeout}s"
      sleep 2
    done
  done
}

wait_active
for path in /healthz /readyz; do
  answer=""
  until answer="$(sudo "${kubectl}" --kubeconfig "${kubeconfig}" --request-timeout=10s get --raw "${path}" 2>&1)" \
    && [ "${answer}" = ok ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || fail "${path} is not ok after ${timeout}s; last answer: ${answer}"
    sleep 3
  done
done
# Again: a controller manager or scheduler with a bad flag or file exits within seconds of its start.
wait_active
echo "kthw: ${node}: control-plane health: ${units[*]} active; /healthz and /readyz ok"
