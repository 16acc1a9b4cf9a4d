#!/usr/bin/env bash
# kthw: {{ node }}: {{ step }}: apply the manifest on stdin as admin, then optionally wait for a rollout.
# `kubectl apply` converges from any earlier state, so re-running this step is harmless. Every
# kubectl call, the retries and the rollout wait are bounded, so a hung API fails the step.
set -euo pipefail

node="{{ node }}"
step="{{ step }}"
# "namespace/deployment" to wait for, or empty when nothing can run yet (no worker is ready).
rollout="{{ rollout }}"
apply_seconds={{ apply_seconds }}
rollout_seconds={{ rollout_seconds }}
kubectl_timeout={{ kubectl_timeout }}

fail() {
  echo "kthw: ${node}: ${step}: $*" >&2
  exit 1
}

# One kubectl call, ended after `seconds` (a hung API connection must not hang the step).
kubectl_admin_for() {
  local seconds="$1"
  shift
  timeout --kill-after=5 "${seconds}" sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig "$@"
}

kubectl_admin() {
  kubectl_admin_for "${kubectl_timeout}" "$@"
}

manifest="$(cat)"
[ -n "${manifest}" ] || fail "no manifest on stdin"

# The API server may still be settling (RBAC bootstrap, etcd leader election): retry until a deadline.
deadline=$((SECONDS + apply_seconds))
until output="$(printf '%s\n' "${manifest}" | kubectl_admin apply -f - 2>&1)"; do
  [ "${SECONDS}" -lt "${deadline}" ] || fail "kubectl apply failed for ${apply_seconds}s: ${output}"
  sleep 5
done
printf '%s\n' "${output}"

if [ -n "${rollout}" ]; then
  kubectl_admin_for "$((rollout_seconds + kubectl_timeout))" -n "${rollout%%/*}" rollout status \
    "deployment/${rollout#*/}" --timeout="${rollout_seconds}s" \
    || fail "deployment ${rollout} did not become ready within ${rollout_seconds}s: $(kubectl_admin -n "${rollout%%/*}" get pods -o wide 2>&1 || true)"
fi
