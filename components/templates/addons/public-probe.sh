#!/usr/bin/env bash
# kthw: {{ node }}: public probe: the API answers through the load balancer (KTHW ch. 8 and 13).
# The public address arrives on stdin; the CA on this worker verifies the serving certificate.
set -euo pipefail

node="{{ node }}"
want="v{{ kubernetes_version }}"
probe_seconds={{ probe_seconds }}

fail() {
  echo "kthw: ${node}: public probe: $*" >&2
  exit 1
}

address="$(tr -d '[:space:]')"
[[ "${address}" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "'${address}' on stdin is not an IPv4 address"
url="https://${address}:{{ port }}/version"

# The health check needs a few intervals before the pool sends traffic to a new backend: retry
# until a deadline, each request bounded.
body=""
deadline=$((SECONDS + probe_seconds))
until body="$(curl -sS --fail --connect-timeout {{ curl_connect_timeout }} --max-time {{ curl_max_time }} \
  --cacert /var/lib/kubernetes/ca.pem "${url}" 2>&1)"; do
  [ "${SECONDS}" -lt "${deadline}" ] || break
  sleep 10
done
version="$(grep -o '"gitVersion": *"[^"]*"' <<<"${body}" | sed 's/.*"\([^"]*\)"$/\1/' || true)"
[ -n "${version}" ] || fail "no answer from ${url} within ${probe_seconds}s: ${body}"
[ "${version}" = "${want}" ] || fail "${url} reports gitVersion ${version}, want ${want}"
echo "kthw: ${node}: public probe: ${url} serves ${version}"
