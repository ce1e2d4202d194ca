#!/usr/bin/env bash
# Installs everything kvnet's tests and demo need on a fresh Debian 12 machine (as root).
# Idempotent: every step checks first, so running it again costs a few seconds.
#   - Debian packages: etcd, ZooKeeper, dockerd 20.10 (the --cluster-store anchor), containerd, runc,
#     datapath tools, debootstrap (offline base images), docker-compose 1.29 (the multi-host harness),
#     and what today's Docker needs to build and run: libseccomp-dev (runc's cgo), tini (docker-init)
#   - the Consul binary (not packaged in Debian): built once from the Go module proxy and
#     cached in /var/cache/kvnet (override with KVNET_CONSUL_BIN=/path/to/consul)
#   - Docker Engine 28.5.2 (dockerd, docker-proxy, CLI; the default engine of the tests), Docker
#     29.8.1 + runc 1.5.3, and Docker Compose v5 as the `docker compose` CLI plugin: built once from
#     the Go module proxy by scripts/install-docker.sh and cached in /var/cache/kvnet (overrides:
#     KVNET_DOCKER28_DIR, KVNET_DOCKER29_DIR, KVNET_RUNC_DIR, KVNET_COMPOSE_BIN)
#   - npm dependencies (npm ci) when node_modules is missing or older than package-lock.json
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "kvnet setup must run as root (it installs packages and the tests create network namespaces)" >&2
  exit 1
fi

APT_PACKAGES=(etcd-server zookeeper iproute2 iptables iputils-ping tcpdump busybox-static docker.io containerd runc debootstrap docker-compose time
  gcc libc6-dev pkg-config libseccomp-dev tini)
# the CNI plugin's tests: podman (its CNI backend), the standard plugins (portmap, firewall, …), curl
APT_PACKAGES+=(podman containernetworking-plugins curl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these as services on install; the tests run their own servers on free ports.
  for s in etcd zookeeper; do systemctl disable --now "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true; done
  pkill -x etcd 2>/dev/null || true
fi

bash scripts/install-consul.sh
bash scripts/install-docker.sh
bash scripts/install-cnitool.sh

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies (npm ci; better-sqlite3 compiles from source, ~3 min)"
  npm ci --no-audit --no-fund --loglevel=error
fi
log "ready"
