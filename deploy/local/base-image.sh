#!/usr/bin/env bash
# A Debian bookworm base image made here, for machines that reach no container registry (CI): debootstrap,
# then Debian's Python 3.11, venv/pip and libvpx7 (the VP8 encoder, ooblex/webrtc/vp8.py) added in a chroot.
# Usage: deploy/local/base-image.sh [NAME]   (default localhost/ooblex-base; skipped when it exists)
set -euo pipefail
name=${1:-localhost/ooblex-base}
podman=("$(dirname "$0")/podman.sh")
if "${podman[@]}" image exists "$name"; then echo "base-image: $name exists"; exit 0; fi
# the mirror this machine's apt uses (deb822 or one-line sources), else Debian's own
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | grep -v '^\s*#' | grep -o -E 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/ooblex-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive && apt-get update -qq &&
  apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip ca-certificates libvpx7 >/dev/null &&
  apt-get clean && rm -rf /var/lib/apt/lists/*'
: > "$root/etc/resolv.conf"
tar -C "$root" -c . | "${podman[@]}" import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "base-image: built $name"
