#!/usr/bin/env bash
# kthw: {{ node }}: wait until this controller's control plane serves: its services run and the
# local API server answers /healthz and /readyz (which covers its etcd connection), so `pulumi up`
# ends with a working API or names the node that has none. Every call and the wait as a whole are
# bounded, so a hung API server fails the step instead of hanging it.
set -euo pipefail

node="{{ node }}"
units=({{ units }})
kubectl="{{ kubectl }}"
# The admin kubeconfig carries the client certificate, so no key ever appears on a command line.
kubeconfig="{{ kubeconfig }}"
timeout={{ timeout_seconds }}
kubectl_timeout={{ kubectl_timeout }}
systemctl_timeout={{ systemctl_timeout }}
deadline=$((SECONDS + timeout))

systemctl_root() {
  timeout --kill-after=5 "${systemctl_timeout}" sudo systemctl "$@"
}

fail() {
  echo "kthw: ${node}: control-plane health: $*" >&2
  for unit in "${units[@]}"; do
    systemctl_root status --no-pager --lines=0 "${unit}" >&2 || true
    sudo journalctl -u "${unit}" -n 25 --no-pager >&2 || true
  done
  exit 1
}

wait_active() {
  local unit
  for unit in "${units[@]}"; do
    until systemctl_root is-active --quiet "${unit}"; do
      [ "${SECONDS}" -lt "${deadline}" ] || fail "${unit} is not active after ${timeout}s"
      sleep 2
    done
  done
}

wait_active
for path in /healthz /readyz; do
  answer=""
  until answer="$(timeout --kill-after=5 "${kubectl_timeout}" sudo "${kubectl}" --kubeconfig "${kubeconfig}" \
    --request-timeout="${kubectl_timeout}s" get --raw "${path}" 2>&1)" && [ "${answer}" = ok ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || fail "${path} is not ok after ${timeout}s; last answer: ${answer:-none within ${kubectl_timeout}s}"
    sleep 3
  done
done
# Again: a controller manager or scheduler with a bad flag or file exits within seconds of its start.
wait_active
echo "kthw: ${node}: control-plane health: ${units[*]} active; /healthz and /readyz ok"
