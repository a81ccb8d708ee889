#!/usr/bin/env bash
# Installs what building and testing Tessera needs on Debian 12 / Ubuntu.
# Idempotent: packages already present are skipped, so a second run is fast.
# Usage: scripts/setup.sh [--test]   (--test adds the tools the test suite drives)
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Build: C and C++ toolchains for -sys crates (OpenH264 is built from its C++ source),
# bindgen's libclang, FFmpeg 5.1 and Opus headers.
pkgs=(pkg-config g++ clang libclang-dev nasm cmake
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
      libavfilter-dev libavdevice-dev libopus-dev ffmpeg ca-certificates curl)
if [ "$want_test" = 1 ]; then
  # Real clients the tests drive: ffmpeg/ffprobe (above), Chromium, a Python venv for aiortc,
  # iproute2 and nftables for test hosts in network namespaces and lossy links.
  # openssl makes the test CA of the rtmps relay test. OBS Studio publishes with its default
  # settings under Xvfb (software OpenGL).
  # Firefox (ESR) runs room.html through puppeteer-core on Node.js (WebDriver BiDi).
  # redis-server is the cluster tests' directory (started by the test, not as a service).
  pkgs+=(chromium python3-venv iproute2 nftables openssl obs-studio xvfb firefox-esr redis-server)
  command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

retry() { # retry <tries> <cmd...>: the package mirrors are sometimes briefly stale
  local n=$1; shift
  for i in $(seq 1 "$n"); do
    "$@" && return 0
    echo "setup: '$*' failed (try $i/$n), retrying in 10 s" >&2
    sleep 10
  done
  return 1
}

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  retry 4 $SUDO apt-get update -q
  retry 4 $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi

# Fetch crates with retries: the crate index mirror sometimes serves a stale view for minutes.
cd "$(dirname "$0")/.."
retry 5 cargo fetch --locked

if [ "$want_test" = 1 ]; then
  # The Python test clients (aiortc, Playwright driving Debian's Chromium) in a venv of their
  # own; Playwright's bundled browsers are never downloaded.
  venv=target/test-venv
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  if ! cmp -s tests/clients/requirements.txt "$venv/.installed" 2>/dev/null; then
    retry 4 "$venv/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt
    cp tests/clients/requirements.txt "$venv/.installed"
  fi
  # The Node.js test client (puppeteer-core, which never downloads a browser here).
  if ! cmp -s tests/clients/package-lock.json tests/clients/node_modules/.installed 2>/dev/null; then
    (cd tests/clients && PUPPETEER_SKIP_DOWNLOAD=1 retry 4 npm ci --no-audit --no-fund --loglevel=error)
    cp tests/clients/package-lock.json tests/clients/node_modules/.installed
  fi
fi
