#!/usr/bin/env bash
# kthw: {{ node }}: nginx: install nginx for the :80 health check proxy (KTHW ch. 8), once.
set -euo pipefail

node="{{ node }}"

fail() {
  echo "kthw: ${node}: nginx: $*" >&2
  exit 1
}

if command -v nginx >/dev/null 2>&1; then
  echo "kthw: ${node}: nginx: already installed"
  exit 0
fi

# A fresh Ubuntu VM runs unattended-upgrades and apt-daily at boot: wait for the dpkg lock, and
# retry with backoff, since `apt-get update` also takes the lists lock the timeout does not cover.
apt_get() {
  for attempt in 1 2 3 4 5; do
    if sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; then
      return 0
    fi
    echo "kthw: ${node}: nginx: apt-get $1 failed (attempt ${attempt}), retrying" >&2
    sleep $((attempt * 10))
  done
  return 1
}
apt_get update -q || fail "apt-get update failed"
apt_get install -y -q --no-install-recommends nginx || fail "apt-get install nginx failed"
command -v nginx >/dev/null 2>&1 || fail "nginx is not on PATH after installing it"
