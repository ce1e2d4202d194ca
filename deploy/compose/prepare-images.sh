#!/usr/bin/env bash
# Offline image preparation for the compose harness (machines that reach Debian's mirror and the npm
# registry but no image registry: CI and the development machines). With a registry you do not need it:
# docker-compose.yml's defaults pull hashicorp/consul and build the rest FROM debian:bookworm-slim and the
# agent image.
#
#   eval "$(deploy/compose/prepare-images.sh)"     # then docker-compose … / scripts/compose-demo.sh
#
# Makes, each step skipped when its image already exists on the daemon (DOCKER_HOST is honoured):
#   1. the base images (scripts/prepare-images.sh: a debootstrapped bookworm and Node 20 on it)
#   2. the agent image $KVNET_AGENT_IMAGE (default kvnet/agent:0.1.0) from deploy/Dockerfile on them
#   3. $PREFIX/consul:1.22.5, a stand-in for hashicorp/consul: the Consul binary scripts/install-consul.sh
#      builds from source (KVNET_CONSUL_BIN, default /var/cache/kvnet/consul-v1.22.5/consul) on the base image
#   4. $PREFIX/docker:28.5.2-dind, a stand-in for docker:28.5.2-dind as far as the node image uses it: only
#      dockerd, docker-proxy and docker in /usr/local/bin, the ones scripts/install-docker.sh builds from
#      source (KVNET_DOCKER28_DIR, default /var/cache/kvnet/docker-28.5.2), FROM scratch
# and prints `export` lines selecting them (KVNET_BASE_IMAGE, KVNET_AGENT_IMAGE, KVNET_CONSUL_IMAGE,
# KVNET_DOCKER_IMAGE) and
# KVNET_BUILD_NETWORK=host (builds reach the mirror through the host's network, whether or not the
# daemon has a default bridge with NAT). Progress goes to stderr.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PREFIX="${KVNET_IMAGE_PREFIX:-kvnet-base}"
DOCKER="${DOCKER:-docker}"
CONSUL_VERSION="${KVNET_CONSUL_VERSION:-1.22.5}"
CONSUL_BIN="${KVNET_CONSUL_BIN:-/var/cache/kvnet/consul-v${CONSUL_VERSION}/consul}"
BASE_IMAGE="$PREFIX/debian:bookworm-slim"
AGENT_IMAGE="${KVNET_AGENT_IMAGE:-kvnet/agent:0.1.0}"
CONSUL_IMAGE="${KVNET_CONSUL_IMAGE:-$PREFIX/consul:${CONSUL_VERSION}}"
DOCKER_VERSION=28.5.2
DOCKER_DIR="${KVNET_DOCKER28_DIR:-/var/cache/kvnet/docker-${DOCKER_VERSION}}"
DOCKER_IMAGE="${KVNET_DOCKER_IMAGE:-$PREFIX/docker:${DOCKER_VERSION}-dind}"

log() { printf '[compose-prepare] %s\n' "$*" >&2; }
have_image() { $DOCKER image inspect "$1" >/dev/null 2>&1; }

if ! have_image "$AGENT_IMAGE" || ! have_image "$CONSUL_IMAGE" || ! have_image "$BASE_IMAGE"; then
  # 1. base images (idempotent itself); its output is the --build-arg flags for deploy/Dockerfile
  build_args="$(DOCKER="$DOCKER" KVNET_IMAGE_PREFIX="$PREFIX" bash "$REPO/scripts/prepare-images.sh")"

  # 2. the agent image
  if ! have_image "$AGENT_IMAGE"; then
    log "docker build $AGENT_IMAGE from deploy/Dockerfile (npm ci compiles better-sqlite3: a few minutes)"
    # shellcheck disable=SC2086 # build_args is a list of flags
    $DOCKER build --network host -q -f "$REPO/deploy/Dockerfile" $build_args -t "$AGENT_IMAGE" "$REPO" >/dev/null
  fi

  # 3. the Consul stand-in
  if ! have_image "$CONSUL_IMAGE"; then
    if [ ! -x "$CONSUL_BIN" ]; then
      log "no Consul binary at $CONSUL_BIN: building it (scripts/install-consul.sh)"
      KVNET_CONSUL_VERSION="$CONSUL_VERSION" KVNET_CONSUL_BIN="$CONSUL_BIN" bash "$REPO/scripts/install-consul.sh"
    fi
    ctx="$(mktemp -d /tmp/kvnet-consul-image.XXXXXX)"
    trap 'rm -rf "$ctx"' EXIT
    cp "$CONSUL_BIN" "$ctx/consul"
    cp "$REPO/deploy/compose/consul-offline.Dockerfile" "$ctx/Dockerfile"
    log "docker build $CONSUL_IMAGE (consul $("$CONSUL_BIN" version | head -1 | awk '{print $2}') from $CONSUL_BIN)"
    $DOCKER build -q --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$CONSUL_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"; trap - EXIT
  fi
fi

# 4. the Docker Engine stand-in (needs no base image: the node image only copies files out of it)
if ! have_image "$DOCKER_IMAGE"; then
  if [ ! -x "$DOCKER_DIR/dockerd" ] || [ ! -x "$DOCKER_DIR/docker" ] || [ ! -x "$DOCKER_DIR/docker-proxy" ]; then
    log "no Docker $DOCKER_VERSION build in $DOCKER_DIR: building it (scripts/install-docker.sh 28)"
    bash "$REPO/scripts/install-docker.sh" 28
  fi
  ctx="$(mktemp -d /tmp/kvnet-docker-image.XXXXXX)"
  trap 'rm -rf "$ctx"' EXIT
  mkdir "$ctx/bin"
  cp "$DOCKER_DIR/dockerd" "$DOCKER_DIR/docker-proxy" "$DOCKER_DIR/docker" "$ctx/bin/"
  printf 'FROM scratch\nCOPY bin/ /usr/local/bin/\n' > "$ctx/Dockerfile"
  log "docker build $DOCKER_IMAGE ($("$DOCKER_DIR/dockerd" --version) from $DOCKER_DIR)"
  $DOCKER build -q --network none -t "$DOCKER_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"; trap - EXIT
fi

cat <<VARS
export KVNET_BASE_IMAGE=$BASE_IMAGE
export KVNET_AGENT_IMAGE=$AGENT_IMAGE
export KVNET_CONSUL_IMAGE=$CONSUL_IMAGE
export KVNET_DOCKER_IMAGE=$DOCKER_IMAGE
export KVNET_BUILD_NETWORK=host
VARS
