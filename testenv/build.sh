#!/usr/bin/env bash
# Builds the testenv binary (embedded etcd + kube-apiserver + kube-controller-manager)
# to <repo>/target/testenv/testenv. No-op when the binary is newer than every input.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/target/testenv/testenv"

if [[ -x "$out" ]]; then
  stale=0
  for f in "$here"/go.mod "$here"/go.sum "$here"/*.go; do
    [[ -e "$f" ]] || continue
    if [[ "$f" -nt "$out" ]]; then stale=1; break; fi
  done
  if [[ $stale -eq 0 ]]; then
    echo "testenv: up to date ($out)"
    exit 0
  fi
fi

. "$root/testenv/go-env.sh"
mkdir -p "$(dirname "$out")" "$GOCACHE" "$GOMODCACHE"

start=$(date +%s)
echo "testenv: building $out (a cold build takes 10-20 minutes on 2 cores) ..." >&2
cd "$here"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -ldflags="-s -w" -o "$tmp" .
mv -f "$tmp" "$out"
echo "testenv: built $out in $(( $(date +%s) - start ))s"
