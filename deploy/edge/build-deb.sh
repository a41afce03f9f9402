#!/usr/bin/env bash
# Builds the edge-client .deb from the size-optimised binary (cargo build --profile edge -p
# edge-client): the binary, the hardened systemd unit, the configuration template (a conffile)
# and the operations notes. dpkg-deb only, so any Debian machine can build it.
# usage: deploy/edge/build-deb.sh [BINARY] [OUT_DIR] [ARCH]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/target/edge/edge-client}"
out="${2:-$root/target/edge}"
arch="${3:-$(dpkg --print-architecture)}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
pkg="$(mktemp -d)"
trap 'rm -rf "$pkg"' EXIT
install -D -m 0755 "$bin" "$pkg/usr/bin/edge-client"
install -D -m 0644 "$root/deploy/edge/edge-client.service" "$pkg/lib/systemd/system/edge-client.service"
install -D -m 0644 "$root/deploy/edge/edge.toml" "$pkg/etc/edge-client/edge.toml"
install -D -m 0644 "$root/deploy/README.md" "$pkg/usr/share/doc/edge-client/README.md"
mkdir -p "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: edge-client
Version: $version
Architecture: $arch
Maintainer: edge-offload maintainers <maintainers@example.com>
Section: net
Priority: optional
Depends: libc6 (>= 2.36)
Installed-Size: $(du -sk "$pkg" | cut -f1)
Homepage: https://example.com/edge-offload
Description: device-side inference offloading client
 Runs a fixed legacy ONNX model and a learned rejector on the device and offloads the
 inputs the rejector picks to a cloud expert over gRPC (Learning to Help), falling back to
 the local answer when the cloud is slow or unreachable. Pure Rust, no libtorch.
CONTROL
echo /etc/edge-client/edge.toml > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
  echo "edge-client: edit /etc/edge-client/edge.toml, then: systemctl enable --now edge-client"
fi
POSTINST
cat > "$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl stop edge-client >/dev/null 2>&1 || true
fi
PRERM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm"
mkdir -p "$out"
deb="$out/edge-client_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$pkg" "$deb" > /dev/null
echo "$deb ($(du -k "$deb" | cut -f1) KiB)"
