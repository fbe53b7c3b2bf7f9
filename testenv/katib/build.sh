#!/usr/bin/env bash
# Builds the upstream test components for trial-pod tests (tests/trial_pod_exec.rs) into
# <repo>/target/katib/bin: Katib's real file-metricscollector (pinned in go.mod) and our
# stand-ins (pause, pilot-agent, katib-db-manager, trial-program). No-op when every binary is
# newer than every input. Its own Go module, so its dependencies never touch testenv's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/katib/bin"
binaries=(file-metricscollector pause pilot-agent katib-db-manager trial-program)
collector=github.com/kubeflow/katib/cmd/metricscollector/v1beta1/file-metricscollector

fresh=1
for bin in "${binaries[@]}"; do
  [[ -x "$out/$bin" ]] || { fresh=0; break; }
  while IFS= read -r -d '' input; do
    if [[ "$input" -nt "$out/$bin" ]]; then fresh=0; break 2; fi
  done < <(find "$here" \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) -print0)
done
if [[ $fresh -eq 1 ]]; then
  echo "katib test components: up to date ($out)"
  exit 0
fi

# Same cache layout as testenv/build.sh (TESTENV_CACHE_DIR shares it between clones).
cache="${TESTENV_CACHE_DIR:-$root/target}"
export GOCACHE="$cache/go-cache"
export GOMODCACHE="$cache/go-mod"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -modcacherw"
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
mkdir -p "$out" "$GOCACHE" "$GOMODCACHE"

start=$(date +%s)
echo "katib test components: building into $out ..." >&2
cd "$here"
tmp="$(mktemp -d "$out.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
go build -trimpath -ldflags="-s -w" -o "$tmp/" ./cmd/... "$collector"
for bin in "${binaries[@]}"; do mv -f "$tmp/$bin" "$out/$bin"; done
echo "katib test components: built in $(( $(date +%s) - start ))s"
