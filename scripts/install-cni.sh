#!/usr/bin/env bash
# Installs the kvnet CNI plugin: dist/kvnet-cni (npm run build) becomes DIR/kvnet — CNI runtimes run
# the executable named after a configuration's "type" — with its first line pointing at this machine's
# node by absolute path (a runtime's cleanup process may run plugins with a minimal PATH; podman's does).
#   scripts/install-cni.sh [DIR]        DIR: the runtime's CNI plugin directory, default /opt/cni/bin
#   KVNET_NODE=/path/to/node            another node binary (Node 20 or later)
#   KVNET_CNI_BUNDLE=/path/to/kvnet-cni another bundle than dist/kvnet-cni
set -euo pipefail
DIR="$(realpath -m "${1:-/opt/cni/bin}")"
[ -z "${KVNET_CNI_BUNDLE:-}" ] || KVNET_CNI_BUNDLE="$(realpath -m "$KVNET_CNI_BUNDLE")"
cd "$(dirname "$0")/.."
NODE="${KVNET_NODE:-$(command -v node || true)}"
[ -x "$NODE" ] || { echo "install-cni: no node binary found (set KVNET_NODE)" >&2; exit 1; }
BUNDLE="${KVNET_CNI_BUNDLE:-dist/kvnet-cni}"
[ -f "$BUNDLE" ] || [ -n "${KVNET_CNI_BUNDLE:-}" ] || npm run build >/dev/null
[ -f "$BUNDLE" ] || { echo "install-cni: $BUNDLE does not exist" >&2; exit 1; }
mkdir -p "$DIR"
tmp="$(mktemp "$DIR/.kvnet.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
{ printf '#!%s\n' "$(readlink -f "$NODE")"; tail -n +2 "$BUNDLE"; } > "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$DIR/kvnet"
trap - EXIT
echo "installed $DIR/kvnet (node $("$NODE" --version), CNI $(CNI_COMMAND=VERSION "$DIR/kvnet" </dev/null))" >&2
