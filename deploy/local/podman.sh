#!/usr/bin/env bash
# podman as this kind of machine (CI) needs it: runc and cgroupfs (crun fails on hybrid cgroups), and explicit
# ulimits, as the defaults cannot be set here (they go in containers.conf so that `podman kube play` gets them
# too). Usage: deploy/local/podman.sh ARGS...  (the arguments of podman)
set -euo pipefail
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=65536
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768  # above this, runc is refused here
conf=${TMPDIR:-/tmp}/ooblex-containers-$nofile-$nproc.conf
if [ ! -f "$conf" ]; then
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
    "$nofile" "$nofile" "$nproc" "$nproc" > "$conf.$$" && mv "$conf.$$" "$conf"
fi
CONTAINERS_CONF=$conf exec podman "$@"
