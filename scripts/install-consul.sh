#!/usr/bin/env bash
# Consul is not in Debian. Build the pinned release from the Go module proxy once and cache the
# binary outside the repository. Consul's go.mod has replace directives, so `go install …@v` is
# refused; a throwaway module that requires consul and builds its main package works.
# Prints nothing when the cached binary is already there.
set -euo pipefail
CONSUL_VERSION="${KVNET_CONSUL_VERSION:-1.22.5}"
OUT="${KVNET_CONSUL_BIN:-/var/cache/kvnet/consul-v${CONSUL_VERSION}/consul}"
if [ -x "$OUT" ] && "$OUT" version >/dev/null 2>&1; then exit 0; fi
command -v go >/dev/null || { echo "install-consul: Go is needed to build Consul (not packaged in Debian)" >&2; exit 1; }
echo "[setup] building consul v${CONSUL_VERSION} from the Go module proxy (~6 min, cached in $(dirname "$OUT"))" >&2
work="$(mktemp -d /tmp/kvnet-consul-build.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module kvnet.local/consulbuild

go 1.25.7

require github.com/hashicorp/consul v${CONSUL_VERSION}

// go-msgpack 1.1.5/1.1.6 were retracted-in-practice releases that break consul's codecs.
exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
MOD
export GOFLAGS=-mod=mod
go get "github.com/hashicorp/consul@v${CONSUL_VERSION}" >/dev/null 2>&1
mkdir -p "$(dirname "$OUT")"
go build -o "$OUT.tmp" github.com/hashicorp/consul
mv "$OUT.tmp" "$OUT"
"$OUT" version | sed -n 1p >&2   # not head: pipefail would turn consul's SIGPIPE into a failed set-up
