# Sourced by the testenv/ build scripts (after they set $root): the Go environment they share.
# Caches live under target/ (so a CI cache of target/ keeps them); TESTENV_CACHE_DIR moves them
# elsewhere, e.g. to a directory that outlives fresh clones on the same machine.
cache="${TESTENV_CACHE_DIR:-$root/target}"
export GOCACHE="$cache/go-cache"
export GOMODCACHE="$cache/go-mod"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -modcacherw"   # keep target/ removable without `go clean -modcache`
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
