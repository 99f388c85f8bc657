#!/usr/bin/env bash
# Set up compleak-harness on a fresh Debian machine (Python 3.11): system packages and a .venv with every extra.
#   bash scripts/setup.sh          what `compleak demo` needs (Fashion-MNIST from Debian, TF, torch, ExecuTorch)
#   bash scripts/setup.sh --test   also what the test suite needs (OpenSSH server, adb, podman, qemu, chromium,
#                                  mksh and busybox-static for the phone-shaped devices)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pkgs=(dataset-fashion-mnist python3-venv)
if [ "$want_test" = 1 ]; then
  pkgs+=(openssh-server openssh-client adb podman runc qemu-user-static binfmt-support debootstrap iproute2
         chromium fonts-dejavu-core
         cmake g++ g++-aarch64-linux-gnu ninja-build nlohmann-json3-dev  # `compleak runners build` (native runner)
         mksh busybox-static util-linux)  # phone-shaped devices (`compleak devices up phone-x86_64`): their .debs
  # (phone-arm64 fetches the arm64 .debs itself: `compleak devices up` runs `dpkg --add-architecture arm64` and
  # `apt-get update` when they are missing)
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a looser spec would pull a multi-GB CUDA build
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all]"
echo "setup: done (.venv ready; run .venv/bin/compleak --help)"
