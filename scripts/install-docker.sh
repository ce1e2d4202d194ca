#!/usr/bin/env bash
# Today's Docker is not in Debian 12 (its docker.io is 20.10, the last release with --cluster-store,
# and stays installed beside these). Build the pinned releases from the Go module proxy once and cache
# the binaries outside the repository, as install-consul.sh does for Consul:
#
#   part     what                                        cached in (override: env variable)
#   28       Docker Engine 28.5.2: dockerd, docker-proxy,  /var/cache/kvnet/docker-28.5.2/   (KVNET_DOCKER28_DIR)
#            docker CLI, docker-init (-> tini-static)
#   29       Docker Engine 29.8.1 (moby/v2 v2.0.0-beta.24): /var/cache/kvnet/docker-29.8.1/   (KVNET_DOCKER29_DIR)
#            dockerd, docker-proxy, docker-init
#   runc     runc 1.5.3 (29 puts a time namespace in the   /var/cache/kvnet/runc-v1.5.3/     (KVNET_RUNC_DIR)
#            OCI spec; Debian's runc 1.1.5 rejects it)
#   compose  Docker Compose v5.6.0, linked as the CLI      /var/cache/kvnet/compose-v5.6.0/  (KVNET_COMPOSE_BIN)
#            plugin /usr/local/lib/docker/cli-plugins/docker-compose so `docker compose` works
#            with every docker CLI on the machine (Debian's 20.10 and the 28 build)
#
# A directory given through its variable is used as it is (nothing is built into it) and must hold the
# binaries named above; KVNET_CACHE_DIR moves the whole cache.
#
#   scripts/install-docker.sh [28] [29] [runc] [compose]      # no argument: all four
#
# Prints nothing when everything is already cached; each part built prints its wall-clock time (the Go
# tool's own output only when a build fails).
#
# Why the module zips need a detour: github.com/docker/docker and github.com/docker/cli at
# v28.5.2+incompatible carry only vendor/modules.txt, not the vendored code, so -mod=vendor fails;
# their dependency list is vendor.mod/vendor.sum, which become go.mod/go.sum of a writable copy.
set -euo pipefail

DOCKER28_VERSION=28.5.2
DOCKER29_VERSION=29.8.1
DOCKER29_MODULE_VERSION=v2.0.0-beta.24   # moby/v2 is served only as v2.0.0-beta.N; beta.24 = 29.8.1
RUNC_VERSION=1.5.3
COMPOSE_VERSION=5.6.0
CACHE="${KVNET_CACHE_DIR:-/var/cache/kvnet}"   # as scripts/prepare-images.sh
CLI_PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
TINI=/usr/bin/tini-static            # Debian package tini; dockerd runs it as docker-init for --init

D28="${KVNET_DOCKER28_DIR:-$CACHE/docker-$DOCKER28_VERSION}"
D29="${KVNET_DOCKER29_DIR:-$CACHE/docker-$DOCKER29_VERSION}"
RUNC_DIR="${KVNET_RUNC_DIR:-$CACHE/runc-v$RUNC_VERSION}"
COMPOSE_BIN="${KVNET_COMPOSE_BIN:-$CACHE/compose-v$COMPOSE_VERSION/docker-compose}"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf 'install-docker: %s\n' "$*" >&2; exit 1; }

# Static, cgo-free engine builds, as Docker's own release builds of dockerd are.
ENGINE_TAGS='netgo osusergo static_build exclude_graphdriver_btrfs'

# True when every named binary in DIR is executable and the first one answers --version
# (docker-proxy has no --version flag).
have() {
  local dir="$1"; shift
  local b
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
  "$dir/$1" --version >/dev/null 2>&1
}

# Writable copy of MODULE@VERSION's source (from the module proxy) in $work/NAME.
fetch_module() {
  local module="$1" version="$2" name="$3" json dir
  json="$(go mod download -json "$module@$version" 2>&1)" || true
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $module@$version failed: $(sed -n 's/^[[:space:]]*"Error": //p' <<<"$json" | head -c 400)"
  cp -r "$dir" "$work/$name"
  chmod -R u+w "$work/$name"
}

# go.mod/go.sum from vendor.mod/vendor.sum (see the header).
unvendor() {
  rm -rf vendor
  cp vendor.mod go.mod
  cp vendor.sum go.sum
}

need_go() { command -v go >/dev/null || die "Go is needed to build Docker from the module proxy (Go 1.26 checked)"; }

# Runs a build step with its output in a log; the EXIT trap shows the end of it if the step fails (not
# `if ! step`: errexit is off inside a condition, and a failed go build must stop the step).
build_log=""
timed() {
  local what="$1" t0=$SECONDS; shift
  build_log="$work/build-$SECONDS.log"
  "$@" >"$build_log" 2>&1
  build_log=""
  log "$what built in $((SECONDS - t0)) s"
}

build_28() {
  local ver="$DOCKER28_VERSION" out="$1"
  fetch_module github.com/docker/docker "v$ver+incompatible" engine28
  ( cd "$work/engine28" && unvendor &&
    CGO_ENABLED=0 go build -mod=readonly -trimpath -tags "$ENGINE_TAGS" \
      -ldflags "-X github.com/docker/docker/dockerversion.Version=$ver -X github.com/docker/docker/dockerversion.GitCommit=kvnet-build" \
      -o "$out/dockerd.tmp" ./cmd/dockerd &&
    CGO_ENABLED=0 go build -mod=readonly -trimpath -tags "$ENGINE_TAGS" -o "$out/docker-proxy.tmp" ./cmd/docker-proxy )
  fetch_module github.com/docker/cli "v$ver+incompatible" cli28
  ( cd "$work/cli28" && unvendor &&
    CGO_ENABLED=0 go build -mod=readonly -trimpath -tags osusergo \
      -ldflags "-X github.com/docker/cli/cli/version.Version=$ver -X github.com/docker/cli/cli/version.GitCommit=kvnet-build" \
      -o "$out/docker.tmp" ./cmd/docker )
  local b; for b in dockerd docker-proxy docker; do mv "$out/$b.tmp" "$out/$b"; done
}

build_29() {
  local out="$1"
  fetch_module github.com/moby/moby/v2 "$DOCKER29_MODULE_VERSION" engine29
  ( cd "$work/engine29" && rm -rf vendor &&
    CGO_ENABLED=0 go build -mod=mod -trimpath -tags "$ENGINE_TAGS" \
      -ldflags "-X github.com/moby/moby/v2/dockerversion.Version=$DOCKER29_VERSION -X github.com/moby/moby/v2/dockerversion.GitCommit=kvnet-build" \
      -o "$out/dockerd.tmp" ./cmd/dockerd &&
    CGO_ENABLED=0 go build -mod=mod -trimpath -tags "$ENGINE_TAGS" -o "$out/docker-proxy.tmp" ./cmd/docker-proxy )
  local b; for b in dockerd docker-proxy; do mv "$out/$b.tmp" "$out/$b"; done
}

build_runc() {
  local out="$1"
  # cgo (libseccomp); not the libpathrs tag, which needs a Rust library Debian 12 lacks.
  fetch_module github.com/opencontainers/runc "v$RUNC_VERSION" runc
  ( cd "$work/runc" && rm -rf vendor &&
    CGO_ENABLED=1 go build -mod=mod -trimpath -tags 'seccomp urfave_cli_no_docs' \
      -ldflags "-X main.version=$RUNC_VERSION -X main.gitCommit=kvnet-build" \
      -o "$out/runc.tmp" . )
  mv "$out/runc.tmp" "$out/runc"
}

build_compose() {
  local out="$1"
  fetch_module github.com/docker/compose/v5 "v$COMPOSE_VERSION" compose
  ( cd "$work/compose" && rm -rf vendor &&
    CGO_ENABLED=0 go build -mod=mod -trimpath \
      -ldflags "-X github.com/docker/compose/v5/internal.Version=v$COMPOSE_VERSION" \
      -o "$out.tmp" ./cmd )
  mv "$out.tmp" "$out"
}

# docker-init for `docker run --init` and the engines' default init binary.
link_init() { [ -e "$1/docker-init" ] || ln -s "$TINI" "$1/docker-init"; }

parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(28 29 runc compose)
work=""
exec 3>&2   # the trap may run inside a step's redirection: report on the script's own stderr
on_exit() {
  local code=$?
  if [ "$code" != 0 ] && [ -n "$build_log" ] && [ -f "$build_log" ]; then
    tail -40 "$build_log" >&3
    printf 'install-docker: the build failed (the end of its output is above)\n' >&3
  fi
  [ -z "$work" ] || rm -rf "$work"
}
trap on_exit EXIT
start_work() {
  [ -n "$work" ] || work="$(mktemp -d /tmp/kvnet-docker-build.XXXXXX)"
}

for part in "${parts[@]}"; do
  case "$part" in
    28)
      if ! have "$D28" dockerd docker-proxy docker; then
        [ -z "${KVNET_DOCKER28_DIR:-}" ] || die "KVNET_DOCKER28_DIR=$D28 lacks a working dockerd, docker-proxy or docker"
        need_go; start_work; mkdir -p "$D28"
        log "building Docker Engine $DOCKER28_VERSION (dockerd, docker-proxy, CLI) from the Go module proxy (~12 min cold, cached in $D28)"
        timed "Docker Engine $DOCKER28_VERSION" build_28 "$D28"
      fi
      [ -n "${KVNET_DOCKER28_DIR:-}" ] || link_init "$D28"
      ;;
    29)
      if ! have "$D29" dockerd docker-proxy; then
        [ -z "${KVNET_DOCKER29_DIR:-}" ] || die "KVNET_DOCKER29_DIR=$D29 lacks a working dockerd or docker-proxy"
        need_go; start_work; mkdir -p "$D29"
        log "building Docker Engine $DOCKER29_VERSION (moby/v2 $DOCKER29_MODULE_VERSION: dockerd, docker-proxy) from the Go module proxy (cached in $D29)"
        timed "Docker Engine $DOCKER29_VERSION" build_29 "$D29"
      fi
      [ -n "${KVNET_DOCKER29_DIR:-}" ] || link_init "$D29"
      ;;
    runc)
      if ! have "$RUNC_DIR" runc; then
        [ -z "${KVNET_RUNC_DIR:-}" ] || die "KVNET_RUNC_DIR=$RUNC_DIR lacks a working runc"
        need_go; start_work; mkdir -p "$RUNC_DIR"
        [ -e /usr/include/seccomp.h ] || die "runc $RUNC_VERSION needs libseccomp-dev (apt-get install libseccomp-dev)"
        log "building runc $RUNC_VERSION from the Go module proxy (cached in $RUNC_DIR)"
        timed "runc $RUNC_VERSION" build_runc "$RUNC_DIR"
      fi
      ;;
    compose)
      if ! [ -x "$COMPOSE_BIN" ] || ! "$COMPOSE_BIN" version >/dev/null 2>&1; then
        [ -z "${KVNET_COMPOSE_BIN:-}" ] || die "KVNET_COMPOSE_BIN=$COMPOSE_BIN is not a working docker-compose v2+ binary"
        need_go; start_work; mkdir -p "$(dirname "$COMPOSE_BIN")"
        log "building Docker Compose v$COMPOSE_VERSION from the Go module proxy (cached in $(dirname "$COMPOSE_BIN"))"
        timed "Docker Compose v$COMPOSE_VERSION" build_compose "$COMPOSE_BIN"
      fi
      if [ "$(readlink "$CLI_PLUGIN_DIR/docker-compose" 2>/dev/null)" != "$COMPOSE_BIN" ]; then
        mkdir -p "$CLI_PLUGIN_DIR"
        ln -sfn "$COMPOSE_BIN" "$CLI_PLUGIN_DIR/docker-compose"
      fi
      ;;
    *) die "unknown part '$part' (expected 28, 29, runc or compose)" ;;
  esac
done
