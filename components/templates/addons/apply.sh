#!/usr/bin/env bash
# kthw: {{ node }}: {{ step }}: apply the manifest on stdin as admin, then optionally wait for a rollout.
# `kubectl apply` converges from any earlier state, so re-running this step is harmless.
set -euo pipefail

node="{{ node }}"
step="{{ step }}"
# "namespace/deployment" to wait for, or empty when nothing can run yet (no worker is ready).
rollout="{{ rollout }}"
attempts=30
timeout="{{ timeout }}"

fail() {
  echo "kthw: ${node}: ${step}: $*" >&2
  exit 1
}

kubectl_admin() {
  sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig "$@"
}

manifest="$(cat)"
[ -n "${manifest}" ] || fail "no manifest on stdin"

# The API server may still be settling (RBAC bootstrap, etcd leader election): retry, bounded.
for attempt in $(seq 1 "${attempts}"); do
  if output="$(printf '%s\n' "${manifest}" | kubectl_admin apply -f - 2>&1)"; then
    printf '%s\n' "${output}"
    break
  fi
  [ "${attempt}" -lt "${attempts}" ] || fail "kubectl apply failed ${attempts} times: ${output}"
  sleep 5
done

if [ -n "${rollout}" ]; then
  kubectl_admin -n "${rollout%%/*}" rollout status "deployment/${rollout#*/}" --timeout="${timeout}" \
    || fail "deployment ${rollout} did not become ready within ${timeout}: $(kubectl_admin -n "${rollout%%/*}" get pods -o wide 2>&1 || true)"
fi
