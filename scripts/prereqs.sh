#!/usr/bin/env bash
# Debian packages the test suite and the demo need (with --bench: what `make bench` adds).
# As root, missing ones are installed; otherwise the exact apt-get command is printed.
# With CI=true a missing package is a failure.
set -euo pipefail

if [[ "${1:-}" == "--bench" ]]; then  # only `make bench`: sysbench for the MySQL load
  PACKAGES=(sysbench)
  NEEDED_BY="the bench parts that need them"
else
  PACKAGES=(
    python3-venv python3-dev gcc             # the venv, and building PyGObject/pycairo from PyPI
    openssh-server openssh-client            # the sandbox bastion and app server; system ssh for `shell`
    mariadb-server mariadb-client            # the sandbox "RDS", queried with a real client
    xvfb trayer xdotool imagemagick x11-utils dbus-x11 dunst libnotify-bin   # real tray test
    libgirepository1.0-dev libcairo2-dev pkg-config gir1.2-gtk-3.0 gir1.2-ayatanaappindicator3-0.1  # PyGObject
    procps psmisc                            # ps/pkill/fuser used by tests to prove nothing is left running
  )
  NEEDED_BY="tests that need them"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "prereqs: not a Debian-like system; install the equivalents of: ${missing[*]}" >&2
  [[ "${CI:-}" == "true" ]] && exit 1
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  echo "prereqs: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "prereqs: missing Debian packages: ${missing[*]}" >&2
echo "prereqs: run:  sudo apt-get install -y ${missing[*]}" >&2
if [[ "${CI:-}" == "true" ]]; then
  echo "prereqs: CI=true and prerequisites are missing: failing" >&2
  exit 1
fi
echo "prereqs: $NEEDED_BY will be skipped" >&2
