#!/usr/bin/env bash
# kthw: {{ node }}: the SSH gate. Reaching this line proves sshd accepts the program's key;
# waiting for cloud-init keeps later apt-get and systemctl steps off a half-booted machine.
set -euo pipefail
if command -v cloud-init >/dev/null 2>&1; then
  sudo cloud-init status --wait >/dev/null 2>&1 || echo "kthw: {{ node }}: cloud-init reported errors; continuing" >&2
fi
echo "kthw: {{ node }}: ready"
