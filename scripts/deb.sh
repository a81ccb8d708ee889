#!/usr/bin/env bash
# Builds the Debian package of Tessera: the binary, the systemd unit and the default config of
# docs/deploy/, a `tessera` system user and /var/lib/tessera as the data dir.
#   scripts/deb.sh [--binary PATH] [--out DIR] [--fast]
# (--fast: gzip -1 instead of xz, for tests of the package.)
# Default: the release build (made here) into target/debian/. Depends are computed from the
# shared libraries the binary links (FFmpeg, Opus, …), so the package fits the distribution
# it was built on.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="" out="target/debian" compress=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR] [--fast]" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  ./scripts/retry.sh cargo build --release --locked --bin tessera
  binary=target/release/tessera
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/tessera_${version}_${arch}"
install -D -m 0755 "$binary" "$pkg/usr/bin/tessera"
install -D -m 0644 docs/deploy/tessera.service "$pkg/lib/systemd/system/tessera.service"
install -D -m 0644 docs/deploy/tessera.toml "$pkg/etc/tessera/tessera.toml"
mkdir -p "$pkg/usr/share/doc/tessera"
printf 'Tessera\nLicense: Apache-2.0 (/usr/share/common-licenses/Apache-2.0)\n' > "$pkg/usr/share/doc/tessera/copyright"
install -D -m 0644 README.md "$pkg/usr/share/doc/tessera/README.md"
install -D -m 0644 docs/operating.md "$pkg/usr/share/doc/tessera/operating.md"

# Depends: the package of each shared library the binary links directly (its NEEDED entries).
depends=$(objdump -p "$binary" | awk '/NEEDED/{print $2}' | while read -r soname; do
  path=$(ldconfig -p | awk -v so="$soname" '$1 == so {print $NF; exit}')
  [ -n "$path" ] && { dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path" 2>/dev/null || true; }
done | cut -d: -f1 | sort -u | while read -r p; do
  v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
  [ -n "$v" ] && echo "$p (>= ${v%%+*})"
done | paste -sd, - | sed 's/,/, /g')

mkdir -p "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: tessera
Version: $version
Architecture: $arch
Maintainer: Tessera developers <tessera@localhost>
Section: net
Priority: optional
Depends: adduser, $depends
Installed-Size: $(du -ks "$pkg" | cut -f1)
Homepage: https://github.com/tessera-media/tessera
Description: self-hosted real-time media server
 A WebRTC SFU, an ingest edge (WHIP, RTMP, pulled streams), an in-process MCU
 (layouts, audio mix, re-encode) and the outputs around it (WHEP, RTMP relay,
 HLS/MP4 recording), controlled by a REST API with tokens, API keys and webhooks.
 Runs as the systemd service tessera with its data in /var/lib/tessera.
CONTROL
echo /etc/tessera/tessera.toml > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd tessera >/dev/null; then
    adduser --system --group --home /var/lib/tessera --no-create-home --gecos "Tessera media server" tessera >/dev/null
  fi
  install -d -o tessera -g tessera -m 0750 /var/lib/tessera
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable tessera.service >/dev/null || true
    systemctl restart tessera.service >/dev/null || true
  fi
fi
SCRIPT
cat > "$pkg/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop tessera.service >/dev/null || true
fi
SCRIPT
cat > "$pkg/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
# The data dir (keys, recordings) stays on purge too: delete /var/lib/tessera by hand.
SCRIPT
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
mkdir -p "$out"
dpkg-deb --root-owner-group "${compress[@]}" --build "$pkg" "$out/" >&2
echo "$out/tessera_${version}_${arch}.deb"
