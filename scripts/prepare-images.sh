#!/usr/bin/env bash
# Offline preparation of the base images deploy/Dockerfile builds FROM, for machines that reach Debian's
# package mirror but no image registry (CI, the development machines). With a registry you do not need
# this: deploy/Dockerfile's defaults (node:20-bookworm-slim, debian:bookworm-slim) are pulled as usual.
#
#   scripts/prepare-images.sh            # prints the --build-arg flags to pass to docker build
#   DOCKER="docker -H unix:///run/x.sock" KVNET_IMAGE_PREFIX=myprefix scripts/prepare-images.sh
#
# Makes (each step skipped when its result exists, so running it again costs a second):
#   1. /var/cache/kvnet/bookworm-minbase.tar: `debootstrap --variant=minbase bookworm`, tarred (~25 s once)
#   2. ${PREFIX}/debian:bookworm-slim   : that tarball, `docker import`ed
#   3. ${PREFIX}/node:20-bookworm-slim  : (2) + this machine's Node 20 (/usr/bin/node, a single binary;
#      Debian bookworm ships Node 18) + its npm + its headers (/usr/include/node), as /usr/local/{bin,include}
#      like the official image, with npm_config_nodedir=/usr/local so node-gyp (better-sqlite3 compiles from
#      source when no prebuilt binary can be fetched) does not try to download the headers. Built with COPY only, so no network is needed. The build machine's extra CA certificates
#      (KVNET_EXTRA_CA_DIR, default /usr/local/share/ca-certificates/*.crt) go in as NODE_EXTRA_CA_CERTS, so
#      npm ci in the build stage works behind a TLS-intercepting proxy as npm does on the machine itself.
# Everything is tagged under ${PREFIX} (default kvnet-base), so
#   docker images --format '{{.Repository}}:{{.Tag}}' | grep '^kvnet-base/' | xargs -r docker rmi
# removes it all; rm /var/cache/kvnet/bookworm-minbase.tar drops the cache.
set -euo pipefail
PREFIX="${KVNET_IMAGE_PREFIX:-kvnet-base}"
DOCKER="${DOCKER:-docker}"
CACHE_DIR="${KVNET_CACHE_DIR:-/var/cache/kvnet}"
ROOTFS_TAR="$CACHE_DIR/bookworm-minbase.tar"
MIRROR="${KVNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NODE_BIN="${KVNET_NODE_BIN:-$(command -v node)}"
NPM_DIR="${KVNET_NPM_DIR:-/usr/lib/node_modules/npm}"
NODE_INCLUDE_DIR="${KVNET_NODE_INCLUDE_DIR:-/usr/include/node}"
EXTRA_CA_DIR="${KVNET_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
BASE_TAG="$PREFIX/debian:bookworm-slim"
NODE_TAG="$PREFIX/node:20-bookworm-slim"

log() { printf '[prepare-images] %s\n' "$*" >&2; }
have_image() { $DOCKER image inspect "$1" >/dev/null 2>&1; }

# 1. the debootstrapped rootfs, cached
if [ ! -s "$ROOTFS_TAR" ]; then
  command -v debootstrap >/dev/null || { log "installing debootstrap"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }; }
  mkdir -p "$CACHE_DIR"
  work="$(mktemp -d "$CACHE_DIR/debootstrap.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "debootstrap --variant=minbase bookworm (~25 s, cached in $ROOTFS_TAR)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; exit 1; }
  # what the official slim image leaves out: apt lists and caches (the Dockerfiles run apt-get update)
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb
  tar --numeric-owner -C "$work/rootfs" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$ROOTFS_TAR"
  rm -rf "$work"; trap - EXIT
fi

# 2. the Debian base image
if ! have_image "$BASE_TAG"; then
  log "docker import $BASE_TAG"
  $DOCKER import --change 'CMD ["bash"]' "$ROOTFS_TAR" "$BASE_TAG" >/dev/null
fi

# 3. the Node 20 image
if ! have_image "$NODE_TAG"; then
  [ -x "$NODE_BIN" ] && "$NODE_BIN" -v | grep -q '^v20\.' || { log "need a Node 20 binary (KVNET_NODE_BIN), $NODE_BIN is $("$NODE_BIN" -v 2>/dev/null || echo missing)"; exit 1; }
  [ -f "$NODE_INCLUDE_DIR/common.gypi" ] || { log "need node's headers at $NODE_INCLUDE_DIR (KVNET_NODE_INCLUDE_DIR)"; exit 1; }
  [ -f "$NPM_DIR/bin/npm-cli.js" ] || { log "need npm at $NPM_DIR (KVNET_NPM_DIR)"; exit 1; }
  ctx="$(mktemp -d /tmp/kvnet-node-image.XXXXXX)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$NODE_BIN" "$ctx/node"
  cp -a "$NPM_DIR" "$ctx/npm"
  # node's headers, so node-gyp (better-sqlite3 compiles from source here) need not download them
  cp -a "$NODE_INCLUDE_DIR" "$ctx/include-node"
  printf '#!/bin/sh\nexec /usr/local/bin/node /usr/local/lib/node_modules/npm/bin/npm-cli.js "$@"\n' > "$ctx/npm.sh"
  printf '#!/bin/sh\nexec /usr/local/bin/node /usr/local/lib/node_modules/npm/bin/npx-cli.js "$@"\n' > "$ctx/npx.sh"
  chmod 0755 "$ctx/node" "$ctx/npm.sh" "$ctx/npx.sh"
  # A build machine behind a TLS-intercepting proxy trusts extra CAs (Debian's place for them:
  # /usr/local/share/ca-certificates); npm ci in the build stage needs them too. Empty when there are none.
  cat "$EXTRA_CA_DIR"/*.crt > "$ctx/extra-ca.pem" 2>/dev/null || : > "$ctx/extra-ca.pem"
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_TAG
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY npm.sh /usr/local/bin/npm
COPY npx.sh /usr/local/bin/npx
COPY include-node /usr/local/include/node
ENV npm_config_nodedir=/usr/local
COPY extra-ca.pem /usr/local/share/kvnet-extra-ca.pem
ENV NODE_EXTRA_CA_CERTS=/usr/local/share/kvnet-extra-ca.pem
CMD ["node"]
DOCKERFILE
  log "docker build $NODE_TAG (node $("$NODE_BIN" -v) from $NODE_BIN)"
  $DOCKER build -q -t "$NODE_TAG" "$ctx" >/dev/null
  $DOCKER run --rm --network none "$NODE_TAG" node -e 'process.stdout.write("")' || { log "node does not run in $NODE_TAG"; exit 1; }
  rm -rf "$ctx"; trap - EXIT
fi

echo "--build-arg BASE_IMAGE=$BASE_TAG --build-arg NODE_IMAGE=$NODE_TAG"
