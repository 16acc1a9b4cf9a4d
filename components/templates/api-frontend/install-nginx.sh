#!/usr/bin/env bash
# kthw: {{ node }}: nginx: install nginx for the :80 health check proxy (KTHW ch. 8), once.
set -euo pipefail

node="{{ node }}"
apt_attempts={{ apt_attempts }}
apt_timeout={{ apt_timeout }}

fail() {
  echo "kthw: ${node}: nginx: $*" >&2
  exit 1
}

# Asked of dpkg, not of PATH: a non-login SSH session on Debian's images has no /usr/sbin on PATH,
# where nginx lives, so `command -v nginx` would reinstall it on every run (and fail offline).
installed() {
  dpkg-query -W -f='${Status}' nginx 2>/dev/null | grep -q "ok installed"
}

if installed; then
  echo "kthw: ${node}: nginx: already installed"
  exit 0
fi

# A fresh Ubuntu VM runs unattended-upgrades and apt-daily at boot: wait for the dpkg lock, and
# retry with backoff, since `apt-get update` also takes the lists lock the timeout does not cover.
# Each call is bounded as a whole, so a mirror that never answers fails the step.
apt_get() {
  local attempt
  for attempt in $(seq 1 "${apt_attempts}"); do
    if timeout --kill-after=10 "${apt_timeout}" sudo DEBIAN_FRONTEND=noninteractive apt-get \
      -o DPkg::Lock::Timeout={{ apt_lock_timeout }} "$@"; then
      return 0
    fi
    echo "kthw: ${node}: nginx: apt-get $1 failed or took over ${apt_timeout}s (attempt ${attempt} of ${apt_attempts})" >&2
    [ "${attempt}" -lt "${apt_attempts}" ] || break
    sleep $((attempt * 10))
  done
  return 1
}
apt_get update -q || fail "apt-get update failed"
apt_get install -y -q --no-install-recommends nginx || fail "apt-get install nginx failed"
installed || fail "nginx is not installed after apt-get install nginx"
