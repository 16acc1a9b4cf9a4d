#!/usr/bin/env bash
# kthw: {{ node }}: {{ step }}: install this step's files, then (re)start its services.
# The files arrive on stdin as a base64 tar, so no certificate or key is ever part of a command
# line. A file is rewritten only when its content or mode differs, and a service restarts only
# when this step's files differ from what it last applied or it is not running: re-running the
# step is harmless. The stamp is per step, not per file, because steps may share a file (ca.pem):
# the first step to write it must not hide the change from the second.
set -euo pipefail

node="{{ node }}"
step="{{ step }}"
units=({{ units }})
stamp="${KTHW_STATE:-/var/lib/kthw}/steps/${step}.sha256"
systemctl_timeout={{ systemctl_timeout }}

fail() {
  echo "kthw: ${node}: ${step}: $*" >&2
  exit 1
}

# systemctl waits for the job it queues: bounded, so a unit that neither starts nor fails (or a
# stuck systemd) ends the step with a message instead of hanging it.
systemctl_root() {
  timeout --kill-after=10 "${systemctl_timeout}" sudo systemctl "$@"
}

journal() {
  sudo journalctl -u "$1" -n 20 --no-pager 2>&1 || true
}

staging="$(mktemp -d)"
trap 'rm -rf "${staging}"' EXIT
bundle="${staging}/bundle.b64"
cat > "${bundle}"
mkdir "${staging}/files"
base64 -d "${bundle}" | tar -x -C "${staging}/files" --no-same-owner || fail "could not unpack the files from stdin"
digest="$(sha256sum "${bundle}" | cut -d' ' -f1)"

changed=0
if [ "$(sudo cat "${stamp}" 2>/dev/null || true)" != "${digest}" ]; then
  changed=1
fi
units_changed=0
while read -r path mode; do
  source_file="${staging}/files/${path#/}"
  [ -f "${source_file}" ] || fail "${path} is missing from the bundle"
  if sudo test -f "${path}" && sudo cmp -s "${source_file}" "${path}" \
    && [ "$(sudo stat -c %a "${path}")" = "${mode}" ]; then
    continue
  fi
  sudo install -D -o root -g root -m "${mode}" "${source_file}" "${path}" || fail "could not install ${path}"
  changed=1
  case "${path}" in
    *.service) units_changed=1 ;;
  esac
done <<'FILES'
{{ files }}
FILES

# Files an earlier version of this step installed and this one replaces (a stale CNI conf would win).
while read -r path; do
  [ -n "${path}" ] || continue
  if sudo test -e "${path}"; then
    sudo rm -f "${path}" || fail "could not remove ${path}"
    changed=1
  fi
done <<'OBSOLETE'
{{ obsolete }}
OBSOLETE

if [ "${units_changed}" = 1 ]; then
  systemctl_root daemon-reload || fail "systemctl daemon-reload failed"
fi

for unit in "${units[@]}"; do
  systemctl_root enable --quiet "${unit}" || fail "could not enable ${unit}"
  # "activating" is a start in progress (an etcd member waiting for its quorum): leave it be.
  state="$(systemctl_root is-active "${unit}" || true)"
  if [ "${changed}" = 1 ] || { [ "${state}" != active ] && [ "${state}" != activating ]; }; then
    status=0
    systemctl_root restart {{ restart_flags }} "${unit}" || status=$?
    case "${status}" in
      0) ;;
      124 | 137) fail "${unit} did not start within ${systemctl_timeout}s: $(journal "${unit}")" ;;
      *) fail "${unit} did not start: $(journal "${unit}")" ;;
    esac
  fi
done
printf '%s\n' "${digest}" | sudo install -D -m 0644 /dev/stdin "${stamp}" || fail "could not record ${stamp}"
echo "kthw: ${node}: ${step}: done"
