#!/usr/bin/env bash
# Build deploy/Dockerfile here with podman: FROM the local base (base-image.sh), pip reaching the index the way
# this machine's pip does (its index/proxy settings from `pip config list`, its CA bundle), as build secrets,
# so no host name lands in a committed file or in the image.
# Usage: deploy/local/build-image.sh [TAG] [BASE]  (defaults localhost/ooblex:latest, localhost/ooblex-base)
set -euo pipefail
tag=${1:-localhost/ooblex:latest}
base=${2:-localhost/ooblex-base}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pip=${PIP:-$(command -v pip3 || command -v pip)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# keys that say where packages come from; file:// indexes and local paths do not exist inside the build
printf '[global]\n' > "$work/pip.conf"
"$pip" config list 2>/dev/null | sed -n -E "s/^[a-z:]+\.(index-url|extra-index-url|trusted-host|proxy|timeout|default-timeout)='(.*)'$/\1 \2/p" |
  while read -r key values; do
    kept=$(for v in $values; do case $v in file:*|/*) ;; *) printf '%s ' "$v";; esac; done)
    if [ -n "$kept" ]; then printf '%s = %s\n' "$key" "$kept" >> "$work/pip.conf"; fi
  done
if [ -n "${PIP_INDEX_URL:-}" ]; then printf 'index-url = %s\n' "$PIP_INDEX_URL" >> "$work/pip.conf"; fi
ca=${PIP_CERT:-$("$pip" config get global.cert 2>/dev/null || true)}
ca=${ca:-/etc/ssl/certs/ca-certificates.crt}
cat "$work/pip.conf"
secrets=(--secret "id=pipconf,src=$work/pip.conf")
[ -f "$ca" ] && secrets+=(--secret "id=pipca,src=$ca")
# docker format: OCI images drop HEALTHCHECK; host network: the index and Debian's mirror as this machine sees them
"$here/podman.sh" build --format docker --network=host -f "$root/deploy/Dockerfile" --build-arg "BASE=$base" \
  "${secrets[@]}" ${EXTRAS:+--build-arg "EXTRAS=$EXTRAS"} -t "$tag" "$root"
# earlier builds' untagged images (each a few hundred MB; the build stage's layer cache goes with them)
"$here/podman.sh" image prune -f >/dev/null
