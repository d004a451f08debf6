#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python 3.11, sourced by scripts/demo,
# scripts/test and scripts/wheel. Each asks only for what it needs:
#   need_debian_packages PKG...   installs the ones missing (apt-get; sudo when not root)
#   core_build_packages           prints the Debian packages that building the C core needs:
#                                 a compiler, venv, and the libraries listed in build.py
#   need_venv PIP_ARGS...         makes .venv when missing, then pip installs PIP_ARGS into it
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"

need_debian_packages() {
  local missing=() pkg sudo=""
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "shardscan: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

core_build_packages() {
  echo gcc python3-dev python3-venv
  python3 "$repo/build.py" --system-libraries | while read -r _header _library package; do echo "$package"; done
}

need_venv() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
}
