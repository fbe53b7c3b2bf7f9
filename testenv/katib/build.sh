#!/usr/bin/env bash
# Builds the upstream test components for trial-pod tests (tests/trial_pod_exec.rs) and the
# Katib end-to-end test (tests/e2e_katib.rs) into <repo>/target/katib/bin: Katib's real
# file-metricscollector and katib-controller (pinned in go.mod) and our stand-ins (pause,
# pilot-agent, katib-db-manager, trial-program, istio-injector); and copies the Katib manifests
# that test applies (webhooks, RBAC, KatibConfig) from the module into target/katib/manifests.
# No-op when every output is newer than every input. Its own Go module, so its dependencies
# never touch testenv's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/katib/bin"
manifests="$root/target/katib/manifests"
binaries=(file-metricscollector katib-controller pause pilot-agent katib-db-manager trial-program istio-injector)
collector=github.com/kubeflow/katib/cmd/metricscollector/v1beta1/file-metricscollector
controller=github.com/kubeflow/katib/cmd/katib-controller/v1beta1
# Module paths of the upstream manifests, and their names under target/katib/manifests.
upstream_manifests=(
  manifests/v1beta1/components/webhook/webhooks.yaml
  manifests/v1beta1/components/controller/rbac.yaml
  manifests/v1beta1/installs/katib-standalone/katib-config.yaml
)

fresh=1
for manifest in "${upstream_manifests[@]}"; do
  [[ -f "$manifests/$(basename "$manifest")" ]] || fresh=0
done
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

. "$root/testenv/go-env.sh"
mkdir -p "$out" "$GOCACHE" "$GOMODCACHE"

start=$(date +%s)
echo "katib test components: building into $out ..." >&2
cd "$here"
tmp="$(mktemp -d "$out.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
go build -trimpath -ldflags="-s -w" -o "$tmp/" ./cmd/... "$collector"
# Its package is named by its directory, v1beta1: name the binary ourselves.
go build -trimpath -ldflags="-s -w" -o "$tmp/katib-controller" "$controller"
for bin in "${binaries[@]}"; do mv -f "$tmp/$bin" "$out/$bin"; done
module="$(go list -m -f '{{.Dir}}' github.com/kubeflow/katib)"
mkdir -p "$manifests"
for manifest in "${upstream_manifests[@]}"; do
  install -m 0644 "$module/$manifest" "$manifests/$(basename "$manifest")"
done
echo "katib test components: built in $(( $(date +%s) - start ))s"
