#!/usr/bin/env bash
# kthw: {{ node }}: the SSH gate. Reaching this line proves sshd accepts the program's key;
# waiting for cloud-init keeps later apt-get and systemctl steps off a half-booted machine. The
# wait is bounded: a cloud-init that never finishes fails the gate instead of hanging `pulumi up`.
set -euo pipefail

node="{{ node }}"
cloud_init_timeout={{ cloud_init_timeout }}

if command -v cloud-init >/dev/null 2>&1; then
  status=0
  timeout --kill-after=10 "${cloud_init_timeout}" sudo cloud-init status --wait >/dev/null 2>&1 || status=$?
  case "${status}" in
    0) ;;
    # 124: timeout stopped the wait; 137: it had to kill it.
    124 | 137)
      echo "kthw: ${node}: ssh gate: cloud-init did not finish within ${cloud_init_timeout}s" >&2
      exit 1
      ;;
    # Errors in a cloud-init module (exit 1, or 2 for recoverable ones) do not stop the bootstrap.
    *) echo "kthw: ${node}: ssh gate: cloud-init reported errors (exit ${status}); continuing" >&2 ;;
  esac
fi
echo "kthw: ${node}: ready"
