#!/usr/bin/env bash
# Copies a binary and the shared libraries it loads that the runtime base image lacks (libtorch,
# c10, libgomp and the CUDA runtime pieces the torch wheel links) into DIST/bin and DIST/lib.
# Libraries of the base system (glibc, libstdc++, libgcc) are left to the image's own packages.
# usage: deploy/collect-libs.sh BINARY DIST
set -euo pipefail
bin="$1"
dist="$2"
mkdir -p "$dist/bin" "$dist/lib"
cp "$bin" "$dist/bin/"
# ldd resolves the whole dependency tree (the binary's RUNPATH points into the torch wheel).
ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
  case "$lib" in
    /lib/*|/usr/lib/*|/lib64/*) ;;
    *) cp -L "$lib" "$dist/lib/" ;;
  esac
done
if ldd "$bin" | grep -q "not found"; then
  ldd "$bin" | grep "not found" >&2
  exit 1
fi
echo "collected $(basename "$bin") and $(ls "$dist/lib" | wc -l) libraries ($(du -sh "$dist/lib" | cut -f1))"
