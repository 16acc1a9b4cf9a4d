#!/usr/bin/env bash
# kthw: {{ node }}: pod routes (KTHW ch. 11, as its current edition does it on each machine): every
# other worker's pod subnet goes through that worker's internal IP. The routes carry their own
# protocol number, so a route of a worker that left the cluster is found and removed, and no
# route anyone else made is touched. Run by kthw-pod-routes.service at every boot.
set -euo pipefail

proto={{ proto }}
# "subnet via-address" per line.
wanted="$(cat <<'ROUTES'
{{ routes }}
ROUTES
)"

while read -r subnet via; do
  [ -n "${subnet}" ] || continue
  ip route replace "${subnet}" via "${via}" proto "${proto}"
done <<< "${wanted}"

ip -4 route show proto "${proto}" | while read -r subnet _; do
  case $'\n'"${wanted}" in
    *$'\n'"${subnet} "*) ;;
    *) ip route del "${subnet}" proto "${proto}" ;;
  esac
done
