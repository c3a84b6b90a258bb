#!/usr/bin/env bash
# Debian packages only `make bench` needs (not the tests): sysbench for the MySQL load.
# As root, missing ones are installed; otherwise the exact apt-get command is printed and the
# bench skips what needs them.
set -euo pipefail

PACKAGES=(sysbench)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench-prereqs: not a Debian-like system; install the equivalents of: ${missing[*]}" >&2
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  echo "bench-prereqs: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
  exit 0
fi

echo "bench-prereqs: missing Debian packages: ${missing[*]}" >&2
echo "bench-prereqs: run:  sudo apt-get install -y ${missing[*]}" >&2
echo "bench-prereqs: the bench rows that need them will be skipped" >&2
