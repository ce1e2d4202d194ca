#!/usr/bin/env bash
# cnitool (the CNI project's reference runtime, which drives every verb including 1.1's STATUS and GC)
# is not in Debian. Build the pinned release from the Go module proxy once (~20 s) and cache the binary
# outside the repository, as install-consul.sh does for Consul. The CNI tests use it to run the kvnet
# plugin without podman. Prints nothing when the cached binary is already there.
set -euo pipefail
CNITOOL_VERSION="${KVNET_CNITOOL_VERSION:-1.3.1}"
OUT="${KVNET_CNITOOL_BIN:-/var/cache/kvnet/cnitool-v${CNITOOL_VERSION}/cnitool}"
if [ -x "$OUT" ]; then exit 0; fi
command -v go >/dev/null || { echo "install-cnitool: Go is needed to build cnitool (not packaged in Debian)" >&2; exit 1; }
echo "[setup] building cnitool v${CNITOOL_VERSION} from the Go module proxy (~20 s, cached in $(dirname "$OUT"))" >&2
work="$(mktemp -d /tmp/kvnet-cnitool-build.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$OUT")"
GOBIN="$work/bin" go install "github.com/containernetworking/cni/cnitool@v${CNITOOL_VERSION}"
mv "$work/bin/cnitool" "$OUT"
echo "[setup] cnitool v${CNITOOL_VERSION} in $OUT" >&2
