#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python 3.11: the system packages the C core
# and the benchmarks need, then .venv with shardscan (editable; the C core is compiled by pip)
# and everything the tests use. Sourced by scripts/demo and scripts/test.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"

missing=()
# libxxhash-dev, libdeflate-dev, libssl-dev: XXH3, CRC32 and SHA-256 for the C core; xxhash,
# b3sum: peers in benches/; clang and libclang-rt-14-dev: libFuzzer for fuzz/.
for pkg in libxxhash-dev libdeflate-dev libssl-dev xxhash b3sum gcc python3-venv clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "shardscan: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# torch is pinned: 2.13.0 is the CPU build (a looser pin may pull a multi-GB CUDA build).
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 ray==2.60.0 -e "$repo[test]"
