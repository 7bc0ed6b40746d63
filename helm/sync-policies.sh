#!/usr/bin/env bash
# Mirror the repository's policies/ into the chart (helm/switchboard/policies/), which Helm
# needs inside the chart directory to render the policies ConfigMap with .Files.Glob.
#   helm/sync-policies.sh          copy (run after editing Rego, before `helm upgrade`)
#   helm/sync-policies.sh --check  exit 1 and show the difference if the copy is stale
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/policies"
dst="$root/helm/switchboard/policies"

if [[ ! -d "$src" ]]; then
  echo "sync-policies: $src does not exist" >&2
  exit 2
fi

if [[ "${1:-}" == "--check" ]]; then
  if diff -r "$src" "$dst" >/dev/null 2>&1; then
    echo "sync-policies: helm/switchboard/policies is in sync with policies/"
    exit 0
  fi
  echo "sync-policies: helm/switchboard/policies is out of date; run helm/sync-policies.sh" >&2
  diff -ru "$src" "$dst" >&2 || true
  exit 1
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--check]" >&2
  exit 2
fi

tmp="$(mktemp -d "$root/helm/.policies.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp -R "$src/." "$tmp/"
# Swap in one step so a concurrent render never sees a half-written copy.
rm -rf "$dst"
mv "$tmp" "$dst"
trap - EXIT
chmod -R u+rwX,go+rX "$dst"
echo "sync-policies: copied $(find "$dst" -type f | wc -l) files from policies/ into the chart"
