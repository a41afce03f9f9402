#!/usr/bin/env bash
# Makes the runtime base image locally, since no image registry is reachable here: a minimal
# Debian bookworm root file system from Debian's own packages (debootstrap), imported into podman
# under the name the Dockerfiles' runtime stage takes as BASE_IMAGE. Idempotent: an existing image
# is kept. With Docker and internet, the Dockerfiles use debian:bookworm-slim instead.
# usage: deploy/base-image.sh [IMAGE] [MIRROR]
set -euo pipefail
image="${1:-localhost/offload-debian:bookworm}"
mirror="${2:-http://deb.debian.org/debian}"
if podman image exists "$image"; then
  echo "base image $image exists"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "base image: debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
# What a slim image leaves out: package lists, caches, documentation.
rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
  "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"* "$work/rootfs/usr/share/locale/"*
tar -C "$work/rootfs" -c . | podman import \
  --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$image" > /dev/null
echo "base image $image: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec)"
