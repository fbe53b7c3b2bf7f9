#!/usr/bin/env bash
# Puts the CRDs the tests and the demo serve under <repo>/target/crds/<set>/<CRD name>.yaml:
# the upstream ones listed in testenv/crds.lock, fetched as Go modules and checked against the
# lock's sha256, and the hand-written ones of deploy/crds/<set>/. A no-op when the lock and the
# hand-written files are unchanged; works offline once the modules are in the Go module cache.
#   testenv/crds.sh                 fetch, check, extract (fails on any checksum mismatch)
#   testenv/crds.sh --print-sums    print the lock's lines with the sums found (to refresh it)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
lock="$here/crds.lock"
out="$root/target/crds"

print_sums=0
case "${1:-}" in
  "") ;;
  --print-sums) print_sums=1 ;;
  *) echo "usage: $0 [--print-sums]" >&2; exit 2 ;;
esac

. "$root/testenv/go-env.sh"   # only the module cache is used here
mkdir -p "$root/target" "$GOMODCACHE"

# Everything the result depends on (this script too), as one fingerprint.
fingerprint() {
  { cat "$lock" "$here/crds.sh"
    find "$root/deploy/crds" -name '*.yaml' -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

# The directory of module@version in the module cache (downloaded if missing).
module_dir() {
  local json dir
  json="$(cd "$root/target" && go mod download -json "$1@$2")" ||
    { echo "crds: go mod download $1@$2 failed: $json" >&2; return 1; }
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  [[ -d "$dir" ]] || { echo "crds: no directory for $1@$2 in: $json" >&2; return 1; }
  echo "$dir"
}

lock_lines() { grep -v '^[[:space:]]*\(#\|$\)' "$lock"; }

if [[ $print_sums -eq 1 ]]; then
  while IFS=$'\t' read -r set module version path _; do
    dir="$(module_dir "$module" "$version")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$set" "$module" "$version" "$path" \
      "$(sha256sum "$dir/$path" | cut -d' ' -f1)"
  done < <(lock_lines)
  exit 0
fi

# One extraction at a time (test binaries and the demo may start together).
exec 9>"$root/target/crds.flock"
flock 9

want="$(fingerprint)"
if [[ -f "$out/.fingerprint" && "$(cat "$out/.fingerprint")" == "$want" ]]; then
  echo "crds: up to date ($out)" >&2
  exit 0
fi

# Splits a YAML stream of CRDs into <dir>/<metadata.name>.yaml, one document each.
split_crds() {
  local file="$1" dir="$2"
  awk -v dir="$dir" -v file="$file" '
    function flush(   target, i) {
      if (!has_text) { n = 0; return }
      if (!is_crd) { printf "crds: %s: a document is not a CustomResourceDefinition\n", file > "/dev/stderr"; exit 1 }
      if (name == "") { printf "crds: %s: a CustomResourceDefinition has no metadata.name\n", file > "/dev/stderr"; exit 1 }
      target = dir "/" name ".yaml"
      if (target in seen) { printf "crds: %s: %s appears twice\n", file, name > "/dev/stderr"; exit 1 }
      seen[target] = 1
      for (i = 0; i < n; i++) print lines[i] > target
      close(target)
      n = 0; has_text = 0; name = ""; is_crd = 0; in_meta = 0
    }
    /^---/ { flush(); next }
    {
      lines[n++] = $0
      if ($0 !~ /^[[:space:]]*(#.*)?$/) has_text = 1
      if ($0 ~ /^kind:[[:space:]]*CustomResourceDefinition[[:space:]]*$/) is_crd = 1
      if ($0 ~ /^metadata:/) { in_meta = 1; next }
      if ($0 ~ /^[^[:space:]#]/) in_meta = 0
      if (in_meta && name == "" && $0 ~ /^  name:/) {
        name = $0
        sub(/^  name:[[:space:]]*/, "", name); gsub(/["\047[:space:]]/, "", name)
      }
    }
    END { flush() }
  ' "$file"
}

start=$(date +%s)
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
mkdir -p "$tmp"
while IFS=$'\t' read -r set module version path sum; do
  dir="$(module_dir "$module" "$version")"
  file="$dir/$path"
  [[ -f "$file" ]] || { echo "crds: $module@$version has no $path" >&2; exit 1; }
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  if [[ "$got" != "$sum" ]]; then
    echo "crds: CHECKSUM MISMATCH for $module@$version $path: lock says $sum, found $got" >&2
    exit 1
  fi
  mkdir -p "$tmp/$set"
  split_crds "$file" "$tmp/$set"
done < <(lock_lines)
for dir in "$root"/deploy/crds/*/; do
  set="$(basename "$dir")"
  mkdir -p "$tmp/$set"
  cp "$dir"*.yaml "$tmp/$set/"
done
echo "$want" >"$tmp/.fingerprint"
rm -rf "$out"
mv "$tmp" "$out"
echo "crds: $(find "$out" -name '*.yaml' | wc -l) CRDs in $out ($(( $(date +%s) - start ))s)" >&2
