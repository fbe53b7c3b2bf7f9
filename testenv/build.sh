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

# Caches live under target/ (so a CI cache of target/ keeps them); TESTENV_CACHE_DIR moves
# them elsewhere, e.g. to a directory that outlives fresh clones on the same machine.
cache="${TESTENV_CACHE_DIR:-$root/target}"
export GOCACHE="$cache/go-cache"
export GOMODCACHE="$cache/go-mod"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -modcacherw"   # keep target/ removable without `go clean -modcache`
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
mkdir -p "$(dirname "$out")" "$GOCACHE" "$GOMODCACHE"

start=$(date +%s)
echo "testenv: building $out (a cold build takes 10-20 minutes on 2 cores) ..." >&2
cd "$here"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -ldflags="-s -w" -o "$tmp" .
mv -f "$tmp" "$out"
echo "testenv: built $out in $(( $(date +%s) - start ))s"
