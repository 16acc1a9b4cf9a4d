#!/usr/bin/env bash
# kthw: {{ node }}: etcd disk: format the controller's etcd disk if it has no filesystem yet, and
# mount it at {{ mount_point }} before etcd ever starts. The disk outlives the VM: a replaced VM finds
# its filesystem (and etcd's data) and only mounts it. A member whose data still sits on the boot
# disk (a cluster made before the etcd disk existed) is copied over once, with etcd stopped.
set -euo pipefail

node="{{ node }}"
device="{{ device }}"
mount_point="{{ mount_point }}"
data_dir="{{ data_dir }}"
unit_path="/etc/systemd/system/{{ unit_name }}"

# systemctl waits for the jobs it queues; a stuck systemd fails the step instead of hanging it.
sctl() { timeout --kill-after=5 "{{ systemctl_timeout }}" sudo systemctl "$@"; }

fail() {
  echo "kthw: ${node}: etcd disk: $*" >&2
  exit 1
}

for _ in $(seq 1 60); do
  [ -b "${device}" ] && break
  sleep 2
done
[ -b "${device}" ] || fail "${device} did not appear (is the etcd disk attached?)"

# blkid exits 2 when it finds no signature: only then is the disk new. Anything else (a
# filesystem, a partition table) is kept as it is.
set +e
fstype="$(sudo blkid -o value -s TYPE "${device}")"
probe=$?
set -e
if [ "${probe}" = 2 ]; then
  sudo mkfs.ext4 -q -L etcd -m 0 "${device}" || fail "mkfs.ext4 ${device} failed"
  fstype=ext4
elif [ "${probe}" != 0 ]; then
  fail "blkid ${device} failed (exit ${probe})"
fi
[ "${fstype}" = ext4 ] || fail "${device} holds a ${fstype:-non-filesystem} signature, not ext4: not touching it"

unit="$(cat <<'UNIT'
{{ mount_unit }}
UNIT
)"
if ! sudo cmp -s <(printf '%s\n' "${unit}") "${unit_path}" 2>/dev/null; then
  printf '%s\n' "${unit}" | sudo install -D -m 0644 /dev/stdin "${unit_path}"
  sctl daemon-reload
fi

if ! mountpoint -q "${mount_point}"; then
  if sudo test -d "${mount_point}/member"; then
    # Data from before the etcd disk: move it onto the disk with etcd stopped.
    staging="$(mktemp -d)"
    sctl stop etcd.service || true
    sudo mount "${device}" "${staging}"
    if ! sudo test -d "${staging}/$(basename "${data_dir}")/member"; then
      sudo mkdir -p -m 0700 "${staging}/$(basename "${data_dir}")"
      sudo cp -a "${mount_point}/member" "${staging}/$(basename "${data_dir}")/"
    fi
    sudo umount "${staging}"
    rmdir "${staging}"
    sudo mv "${mount_point}/member" "${mount_point}.boot-disk-member"
  fi
  sctl enable --quiet --now "{{ unit_name }}" || fail "could not mount ${device} at ${mount_point}"
fi
mountpoint -q "${mount_point}" || fail "${mount_point} is not mounted"
sctl enable --quiet "{{ unit_name }}"
echo "kthw: ${node}: etcd disk: ${device} mounted at ${mount_point}"
