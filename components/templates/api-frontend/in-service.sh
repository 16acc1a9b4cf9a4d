#!/usr/bin/env bash
# kthw: {{ node }}: in service: wait until the load balancer's health check, asked as the pool asks
# it, has answered ok for {{ hold_seconds }}s in a row: long enough for the pool to send this controller
# requests again. The next controller's control plane restarts only after this, so the pool never
# loses two API servers at once. Bounded, like every wait.
set -euo pipefail

node="{{ node }}"
url="{{ url }}"
hold={{ hold_seconds }}
timeout={{ timeout_seconds }}
deadline=$((SECONDS + timeout))

# Microseconds: bash's SECONDS counts whole seconds, so a hold measured with it may be a second short.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }

since=""
code=""
while :; do
  code="$(curl -sS -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time 5 \
    -H "Host: {{ host }}" "${url}" 2>/dev/null || true)"
  if [ "${code}" = 200 ]; then
    since="${since:-$(now_us)}"
    [ $(($(now_us) - since)) -lt $((hold * 1000000)) ] || break
  else
    since=""
  fi
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "kthw: ${node}: in service: the health check ${url} did not answer ok for ${hold}s in a row within ${timeout}s (last answer: ${code:-none})" >&2
    exit 1
  fi
  sleep 1
done
echo "kthw: ${node}: in service: the health check answered ok for ${hold}s in a row"
