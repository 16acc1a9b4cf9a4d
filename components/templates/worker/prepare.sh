#!/usr/bin/env bash
# kthw: {{ node }}: worker prerequisites (KTHW ch. 9): the packages kube-proxy and port-forwarding
# need, swap off for the kubelet, and the kernel modules and sysctls that pod networking needs,
# each persisted so a reboot keeps them. Every step checks first, so a re-run changes nothing.
set -euo pipefail

node="{{ node }}"
packages=({{ packages }})
apt_attempts={{ apt_attempts }}
apt_timeout={{ apt_timeout }}

fail() {
  echo "kthw: ${node}: worker prepare: $*" >&2
  exit 1
}

# apt-get waits for a dpkg lock held by unattended-upgrades on a fresh VM instead of failing, each
# call is bounded as a whole (a mirror that never answers), and a failed call is retried a few times.
apt_get() {
  local attempt
  for attempt in $(seq 1 "${apt_attempts}"); do
    if timeout --kill-after=10 "${apt_timeout}" sudo DEBIAN_FRONTEND=noninteractive apt-get \
      -o DPkg::Lock::Timeout={{ apt_lock_timeout }} -q -y "$@"; then
      return 0
    fi
    echo "kthw: ${node}: worker prepare: apt-get $1 failed or took over ${apt_timeout}s (attempt ${attempt} of ${apt_attempts})" >&2
    [ "${attempt}" -lt "${apt_attempts}" ] || break
    sleep $((attempt * 10))
  done
  return 1
}

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q "ok installed" || missing+=("${package}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_get update || fail "apt-get update failed"
  apt_get install --no-install-recommends "${missing[@]}" || fail "could not install ${missing[*]}"
fi

# The kubelet refuses to start with swap on (failSwapOn).
sudo swapoff -a || fail "swapoff failed"
if grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
  sudo sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# kthw: swap off: \1/' /etc/fstab \
    || fail "could not disable swap in /etc/fstab"
fi

# overlay for containerd's snapshotter; br_netfilter so bridged pod traffic passes iptables.
modules_file=/etc/modules-load.d/kthw.conf
modules="$(printf '%s\n' {{ modules }})"
if [ "$(cat "${modules_file}" 2>/dev/null || true)" != "${modules}" ]; then
  printf '%s\n' "${modules}" | sudo tee "${modules_file}" >/dev/null || fail "could not write ${modules_file}"
fi
for module in {{ modules }}; do
  sudo modprobe "${module}" || fail "could not load kernel module ${module}"
done

sysctl_file=/etc/sysctl.d/99-kthw.conf
sysctls="$(printf '%s\n' {{ sysctls }})"
if [ "$(cat "${sysctl_file}" 2>/dev/null || true)" != "${sysctls}" ]; then
  printf '%s\n' "${sysctls}" | sudo tee "${sysctl_file}" >/dev/null || fail "could not write ${sysctl_file}"
fi
sudo sysctl -q -p "${sysctl_file}" >/dev/null || fail "could not apply ${sysctl_file}"

# Pods must not inherit systemd-resolved's stub (127.0.0.53), which is unreachable from a pod's
# network namespace: point the kubelet at the upstream servers where resolved runs (Ubuntu), and
# at /etc/resolv.conf where it does not (Debian 12).
upstream=/etc/resolv.conf
if [ -f /run/systemd/resolve/resolv.conf ]; then
  upstream=/run/systemd/resolve/resolv.conf
fi
if [ "$(readlink {{ resolv_conf }} 2>/dev/null || true)" != "${upstream}" ]; then
  sudo mkdir -p "$(dirname {{ resolv_conf }})"
  sudo ln -sfn "${upstream}" {{ resolv_conf }} || fail "could not link {{ resolv_conf }} to ${upstream}"
fi
echo "kthw: ${node}: worker prepare: done"
