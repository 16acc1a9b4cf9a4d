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

# A fresh Ubuntu VM runs unattended-upgrades at boot; wait for its dpkg lock rather than fail.
apt_get() {
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"
}
apt_get update -q || fail "apt-get update failed"
apt_get install -y -q --no-install-recommends nginx || fail "apt-get install nginx failed"
command -v nginx >/dev/null 2>&1 || fail "nginx is not on PATH after installing it"
