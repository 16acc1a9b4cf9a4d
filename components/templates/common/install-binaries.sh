#!/usr/bin/env bash
# kthw: {{ node }}: install binaries. Every download is checked against its SHA-256 before any file
# is installed, cached under its digest so a re-run downloads nothing, and installed by rename so a
# running service never sees a half-written binary. Files that already match are left alone.
set -euo pipefail

node="{{ node }}"
# Overridable so tests can run the script unprivileged against a local mirror; nodes use the defaults.
root="${KTHW_ROOT:-}"
cache="${KTHW_CACHE:-/var/cache/kthw}"
if [ -n "${KTHW_SUDO+set}" ]; then
  sudo_cmd="${KTHW_SUDO}"
elif [ "$(id -u)" -eq 0 ]; then
  sudo_cmd=""
else
  sudo_cmd="sudo"
fi

as_root() {
  if [ -n "${sudo_cmd}" ]; then
    "${sudo_cmd}" "$@"
  else
    "$@"
  fi
}

fail() {
  echo "kthw: ${node}: install $1: $2" >&2
  exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# Fields: name version kind url checksum dest members. checksum is a pinned SHA-256 or the URL of
# the checksum file the project publishes beside the release.
mapfile -t manifest <<'MANIFEST'
{{ manifest }}
MANIFEST

# Every download is bounded: a mirror that accepts and never answers fails the step after
# (retries + 1) attempts of at most max-time seconds each, instead of hanging `pulumi up`.
curl_max_time={{ curl_max_time }}
curl_retries={{ curl_retries }}
download() {
  local name="$1" url="$2" out="$3"
  if ! curl --fail --silent --show-error --location --connect-timeout {{ curl_connect_timeout }} \
    --max-time "${curl_max_time}" --retry "${curl_retries}" --retry-delay {{ curl_retry_delay }} \
    --output "${out}" "${url}" 2>"${work}/curl.err"; then
    fail "${name}" "download of ${url} failed ($((curl_retries + 1)) attempts of at most ${curl_max_time}s): $(tr '\n' ' ' <"${work}/curl.err")"
  fi
}

sha256_of() {
  sha256sum "$1" | cut -d ' ' -f 1
}

# Sets `expected`: the pinned digest, or the one the checksum file gives for the artifact's file
# name (lines "digest  name"), or its only word (dl.k8s.io's and crictl's files hold the digest alone).
expected=""
expected_digest() {
  local name="$1" url="$2" checksum="$3"
  if [[ "${checksum}" =~ ^[0-9a-f]{64}$ ]]; then
    expected="${checksum}"
    return
  fi
  download "${name}" "${checksum}" "${work}/${name}.sums"
  expected="$(awk -v want="${url##*/}" '
    NF == 1 && NR == 1 { single = $1 }
    NF >= 2 { f = $2; sub(/^\*/, "", f); sub(/^\.\//, "", f); if (f == want) { print $1; found = 1; exit } }
    END { if (!found && NR == 1 && single != "") print single }
  ' "${work}/${name}.sums" | tr '[:upper:]' '[:lower:]')"
  if ! [[ "${expected}" =~ ^[0-9a-f]{64}$ ]]; then
    fail "${name}" "no SHA-256 for ${url##*/} in ${checksum}"
  fi
}

# Phase 1: fetch and verify every artifact and resolve the files it installs. Nothing is installed
# until all of them passed, so a bad download leaves the node as it was.
sources=()
targets=()
owners=()
for line in "${manifest[@]}"; do
  read -r name version kind url checksum dest members <<<"${line}"
  step="${name}"
  expected_digest "${step}" "${url}" "${checksum}"
  cached="${cache}/${expected}-${url##*/}"
  if ! { [ -f "${cached}" ] && [ "$(sha256_of "${cached}")" = "${expected}" ]; }; then
    download "${step}" "${url}" "${work}/download"
    actual="$(sha256_of "${work}/download")"
    if [ "${actual}" != "${expected}" ]; then
      fail "${step}" "SHA-256 mismatch for ${url}: expected ${expected}, got ${actual}"
    fi
    as_root install -D -m 0644 "${work}/download" "${cached}.part" || fail "${step}" "could not write ${cached}"
    as_root mv -f "${cached}.part" "${cached}" || fail "${step}" "could not write ${cached}"
  fi

  IFS=',' read -r -a wanted <<<"${members}"
  case "${kind}" in
    file)
      sources+=("${cached}")
      targets+=("${root}${dest}/${wanted[0]}")
      owners+=("${step} ${version}")
      ;;
    tar)
      unpacked="${work}/${name}.d"
      mkdir -p "${unpacked}"
      tar -xzf "${cached}" -C "${unpacked}" --no-same-owner || fail "${step}" "could not unpack ${cached}"
      found=0
      for member in "${wanted[@]}"; do
        if [[ "${member}" == "*" || "${member}" == */\* ]]; then
          dir="${member%\*}"
          while IFS= read -r -d '' file; do
            sources+=("${file}")
            targets+=("${root}${dest}/${file##*/}")
            owners+=("${step} ${version}")
            found=$((found + 1))
          done < <(find "${unpacked}/${dir}" -mindepth 1 -maxdepth 1 -type f -perm -u+x -print0 | sort -z)
        else
          [ -f "${unpacked}/${member}" ] || fail "${step}" "${url##*/} has no ${member}"
          sources+=("${unpacked}/${member}")
          targets+=("${root}${dest}/${member##*/}")
          owners+=("${step} ${version}")
          found=$((found + 1))
        fi
      done
      [ "${found}" -gt 0 ] || fail "${step}" "${url##*/} holds none of ${members}"
      ;;
    *)
      fail "${step}" "unknown artifact kind ${kind}"
      ;;
  esac
done

# Phase 2: install what differs, each file through a temporary name and a rename.
for i in "${!sources[@]}"; do
  source_file="${sources[${i}]}"
  target="${targets[${i}]}"
  if [ -f "${target}" ] && cmp -s "${source_file}" "${target}" && [ "$(stat -c %a "${target}")" = 755 ]; then
    echo "kthw: ${node}: install ${owners[${i}]%% *}: ${target} is up to date"
    continue
  fi
  read -r name version <<<"${owners[${i}]}"
  as_root install -D -m 0755 "${source_file}" "${target}.kthw-new" || fail "${name}" "could not write ${target}"
  as_root mv -f "${target}.kthw-new" "${target}" || fail "${name}" "could not replace ${target}"
  echo "kthw: ${node}: install ${name}: installed ${target} (${version})"
done
