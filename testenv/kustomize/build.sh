#!/usr/bin/env bash
# Builds the kustomize CLI (sigs.k8s.io/kustomize/kustomize/v5, pinned by the `tool` line of
# go.mod) to <repo>/target/kustomize/kustomize, for the tests that build deploy/ with it
# (tests/kustomize.rs, tests/e2e_rbac.rs). No-op when the binary is newer than every input. Its
# own Go module, so its dependencies never touch testenv's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/kustomize/kustomize"

if [[ -x "$out" ]]; then
  stale=0
  for f in "$here"/go.mod "$here"/go.sum "$here"/build.sh; do
    if [[ "$f" -nt "$out" ]]; then stale=1; break; fi
  done
  if [[ $stale -eq 0 ]]; then
    echo "kustomize: up to date ($out)"
    exit 0
  fi
fi

. "$root/testenv/go-env.sh"
mkdir -p "$(dirname "$out")" "$GOCACHE" "$GOMODCACHE"

start=$(date +%s)
echo "kustomize: building $out ..." >&2
cd "$here"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -ldflags="-s -w" -o "$tmp" sigs.k8s.io/kustomize/kustomize/v5
mv -f "$tmp" "$out"
echo "kustomize: built $out in $(( $(date +%s) - start ))s"
