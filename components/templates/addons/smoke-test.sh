#!/usr/bin/env bash
# kthw: {{ node }}: smoke test: KTHW ch. 13 from a controller: nodes, encryption at rest, a
# deployment, exec and logs through the kubelet, and cluster DNS; then, when they are on, an audit event
# for a request of its own and `kubectl top nodes`. The manifests arrive on stdin.
# Every kubectl and etcdctl call and every check's wait is bounded, so a hung API or a pod that never
# starts fails the test with the check's name; re-running the test replaces its objects, so it is idempotent.
set -euo pipefail

node="{{ node }}"
workers=({{ workers }})
service_ip="{{ service_ip }}"
dns_ip="{{ dns_ip }}"
secret="{{ secret }}"
deployment="{{ deployment }}"
dns_pod="{{ dns_pod }}"
encryption_prefix="{{ encryption_prefix }}"
# Empty when kthw:auditLevel is off / kthw:metricsServer is false.
audit_log="{{ audit_log }}"
metrics="{{ metrics }}"
check_seconds={{ check_seconds }}
kubectl_timeout={{ kubectl_timeout }}
etcdctl_timeout={{ etcdctl_timeout }}

fail() {
  echo "kthw: ${node}: smoke test: $*" >&2
  exit 1
}

# One kubectl call, ended after `seconds` (a hung API connection must not hang the test).
kubectl_admin_for() {
  local seconds="$1"
  shift
  timeout --kill-after=5 "${seconds}" sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig "$@"
}

kubectl_admin() {
  kubectl_admin_for "${kubectl_timeout}" "$@"
}

# A new DNS probe pod (one lookup per pod, and pods are immutable): the old one goes first, then the
# manifests are applied again, which leaves an unchanged deployment as it is. $1 names the check.
start_dns_probe() {
  kubectl_admin delete pod "${dns_pod}" --ignore-not-found --wait=true --timeout="${kubectl_timeout}s" >/dev/null \
    || fail "dns: could not delete the previous ${dns_pod}"
  printf '%s\n' "${manifests}" | kubectl_admin apply -f - >/dev/null || fail "$1: kubectl apply failed"
}

manifests="$(cat)"
[ -n "${manifests}" ] || fail "setup: no manifests on stdin"

# 1. Every worker registered and Ready (a fresh kubelet needs a moment after its first start).
deadline=$((SECONDS + check_seconds))
for worker in "${workers[@]}"; do
  status=""
  until [ "${status}" = "True" ]; do
    status="$(kubectl_admin get node "${worker}" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
    [ "${status}" = "True" ] && break
    [ "${SECONDS}" -lt "${deadline}" ] \
      || fail "nodes: ${worker} is not Ready after ${check_seconds}s (Ready=${status:-unregistered})"
    sleep 5
  done
  echo "kthw: ${node}: smoke test: nodes: ${worker} is Ready"
done

# 2. Data encryption (KTHW ch. 13): a secret is stored in etcd under the aescbc provider's prefix.
#    Only the prefix is compared; the stored value is never printed.
kubectl_admin create secret generic "${secret}" --from-literal=mykey=mydata --dry-run=client -o yaml \
  | kubectl_admin apply -f - >/dev/null || fail "encryption: could not create secret ${secret}"
stored="$(mktemp)"
trap 'rm -f "${stored}"' EXIT
# The file is ours (mktemp); only etcdctl needs root, for the etcd client key.
# shellcheck disable=SC2024
timeout --kill-after=5 "${etcdctl_timeout}" sudo ETCDCTL_API=3 /usr/local/bin/etcdctl get "/registry/secrets/default/${secret}" --print-value-only \
  --endpoints=https://127.0.0.1:2379 \
  --cacert=/etc/etcd/ca.pem \
  --cert=/etc/etcd/kubernetes.pem \
  --key=/etc/etcd/kubernetes-key.pem >"${stored}" || fail "encryption: etcdctl get failed"
actual_prefix="$(head -c "${#encryption_prefix}" "${stored}" | tr -c '[:print:]' '?')"
[ "${actual_prefix}" = "${encryption_prefix}" ] \
  || fail "encryption: secret ${secret} is stored with prefix '${actual_prefix}', want '${encryption_prefix}'"
echo "kthw: ${node}: smoke test: encryption: secret ${secret} is stored as ${encryption_prefix}..."

# 3. Deployments, and the first DNS probe pod.
start_dns_probe "deployment"
kubectl_admin_for "$((check_seconds + kubectl_timeout))" rollout status "deployment/${deployment}" \
  --timeout="${check_seconds}s" \
  || fail "deployment: ${deployment} did not become ready: $(kubectl_admin get pods -o wide 2>&1 || true)"

# 4. Exec and logs go API server -> kubelet: they prove the kube-apiserver-to-kubelet RBAC (KTHW ch. 8).
#    A kubelet that was just restarted (a Kubernetes upgrade) is Ready in the API server before its
#    own server answers (seen on the local cloud): retry until the check's deadline, then fail.
deadline=$((SECONDS + check_seconds))
until kubectl_admin exec "deployment/${deployment}" -- nginx -v >/dev/null 2>&1; do
  [ "${SECONDS}" -lt "${deadline}" ] || fail "exec: kubectl exec into ${deployment} failed for ${check_seconds}s (kubelet authorization?)"
  sleep 5
done
until kubectl_admin logs "deployment/${deployment}" --tail=1 >/dev/null; do
  [ "${SECONDS}" -lt "${deadline}" ] || fail "logs: kubectl logs of ${deployment} failed for ${check_seconds}s (kubelet authorization?)"
  sleep 5
done
echo "kthw: ${node}: smoke test: deployment: ${deployment} is ready; exec and logs work"

# 5. DNS (KTHW ch. 12): the probe pod resolves kubernetes.default through the cluster DNS service.
#    One lookup can fail while the cluster DNS catches up with an API server that just restarted
#    (CoreDNS answered REFUSED once on the local cloud after a single controller's upgrade), so a
#    failed probe pod is replaced and the lookup tried again until the check's deadline.
phase=""
failed_lookups=0
lookup=""
deadline=$((SECONDS + check_seconds))
while :; do
  phase="$(kubectl_admin get pod "${dns_pod}" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  [ "${phase}" = Succeeded ] && break
  if [ "${phase}" = Failed ]; then
    failed_lookups=$((failed_lookups + 1))
    lookup="$(kubectl_admin logs "${dns_pod}" 2>&1 || true)"
    [ "${SECONDS}" -lt "${deadline}" ] || break
    echo "kthw: ${node}: smoke test: dns: lookup ${failed_lookups} failed, trying again: ${lookup//$'\n'/ }"
    start_dns_probe "dns"
  fi
  [ "${SECONDS}" -lt "${deadline}" ] || break
  sleep 5
done
[ "${phase}" = Succeeded ] \
  || fail "dns: ${dns_pod} ended in phase '${phase:-Pending}' after ${failed_lookups} failed lookups in ${check_seconds}s: ${lookup}"
lookup="$(kubectl_admin logs "${dns_pod}" 2>&1 || true)"
# Compare whole fields: 10.32.0.1 must not match inside 10.32.0.10.
awk -v ip="${dns_ip}" '$1 == "Server:" && $2 == ip { found = 1 } END { exit !found }' <<<"${lookup}" \
  || fail "dns: the lookup did not use the cluster DNS ${dns_ip}: ${lookup}"
awk -v ip="${service_ip}" '
  $1 == "Name:" { answer = 1 }
  answer && $1 ~ /^Address/ { for (i = 2; i <= NF; i++) if ($i == ip) found = 1 }
  END { exit !found }' <<<"${lookup}" \
  || fail "dns: kubernetes.default did not resolve to ${service_ip}: ${lookup}"
echo "kthw: ${node}: smoke test: dns: kubernetes.default -> ${service_ip} via ${dns_ip}"

# 6. Audit (kthw:auditLevel): a request this test makes shows up in this controller's audit log (the
#    admin kubeconfig talks to the local API server). The policy logs configmaps at Metadata: the event
#    names the object, never its data.
if [ -n "${audit_log}" ]; then
  marker="kthw-smoke-audit-$(date +%s)-${RANDOM}"
  kubectl_admin -n default create configmap "${marker}" >/dev/null || fail "audit: could not create configmap ${marker}"
  logged=""
  for _ in $(seq 1 15); do
    if sudo grep -qF -- "${marker}" "${audit_log}"; then
      logged="yes"
      break
    fi
    sleep 2
  done
  kubectl_admin -n default delete configmap "${marker}" --ignore-not-found >/dev/null || true
  [ -n "${logged}" ] || fail "audit: no event for configmap ${marker} in ${audit_log} after 30 seconds"
  echo "kthw: ${node}: smoke test: audit: ${audit_log} records the creation of configmap ${marker}"
fi

# 7. Metrics (kthw:metricsServer): the aggregated metrics API answers for every worker. Its first scrape
#    comes a minute or so after it starts, so this waits, bounded.
if [ -n "${metrics}" ]; then
  top=""
  for _ in $(seq 1 30); do
    top="$(kubectl_admin top nodes --no-headers --request-timeout=10s 2>&1 || true)"
    missing=()
    for worker in "${workers[@]}"; do
      awk -v n="${worker}" '$1 == n { found = 1 } END { exit !found }' <<<"${top}" || missing+=("${worker}")
    done
    [ "${#missing[@]}" -eq 0 ] && break
    sleep 10
  done
  [ "${#missing[@]}" -eq 0 ] || fail "metrics: kubectl top nodes has no figures for ${missing[*]} after 5 minutes: ${top}"
  echo "kthw: ${node}: smoke test: metrics: kubectl top nodes reports ${workers[*]}"
fi
