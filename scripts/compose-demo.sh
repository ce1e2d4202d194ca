#!/usr/bin/env bash
# The seeds' demo on the docker-compose harness (docker-compose.yml): three Docker-in-Docker nodes, each
# with its own dockerd and kvnet agent, sharing one KV server. A network is created on node1, listed on
# node2 and node3, a container is started on each node and they ping each other across nodes by address,
# then by name (kvnet's resolver; the nodes' daemon.json has "dns": ["169.254.53.53"]).
#
#   scripts/compose-demo.sh [--offline] [--keep] [--build-only] [consul|etcd|zookeeper]
#
#   consul|etcd|zookeeper  the KV backend (default consul)
#   --offline      no image registry: make local stand-ins first (deploy/compose/prepare-images.sh)
#   --keep         leave the harness running afterwards (remove it with the `down` line printed)
#   --build-only   build the images the backend needs, start nothing
#
# Compose: `docker compose` (Compose v2 or later, what `docker` has today; scripts/install-docker.sh
# builds v5) when the docker CLI has it, else `docker-compose` (the retired Python 1.29, Debian's
# package); KVNET_COMPOSE="docker-compose" (or "docker compose") picks one. The first step prints which.
# Builds only what is missing: the agent image (deploy/Dockerfile) when the node image must be built and
# the agent image is not there, then `compose build` for the node and etcd/zookeeper images that
# are not there. DOCKER_HOST selects the daemon; COMPOSE_PROJECT_NAME the project (default kvnet-demo);
# image names come from KVNET_*_IMAGE (see docker-compose.yml). Prints PASS or FAIL and the time taken;
# exits non-zero on FAIL. Tears the harness down (`down -v`: containers, network, the nodes' volumes)
# unless --keep, also on failure and Ctrl-C; images are kept for the next run.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-kvnet-demo}"
export COMPOSE_FILE="$REPO/docker-compose.yml"
READY_TIMEOUT_S="${KVNET_DEMO_TIMEOUT_S:-180}"
DEMO_NETWORK="${KVNET_DEMO_NETWORK:-demo}"
DEMO_SUBNET="${KVNET_DEMO_SUBNET:-10.220.0.0/24}"
BUSYBOX_IMAGE="${KVNET_BUSYBOX_IMAGE:-busybox:local}"
NODES=(node1 node2 node3)

backend=consul offline=0 keep=0 build_only=0
for arg in "$@"; do
  case "$arg" in
    consul|etcd|zookeeper) backend="$arg" ;;
    --offline) offline=1 ;;
    --keep) keep=1 ;;
    --build-only) build_only=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compose-demo: unknown argument '$arg' (expected consul, etcd, zookeeper, --offline, --keep, --build-only)" >&2; exit 2 ;;
  esac
done
case "$backend" in
  consul) export KVNET_CLUSTER_STORE="consul://consul:8500/kvnet" ;;
  etcd) export KVNET_CLUSTER_STORE="etcd://etcd:2379/kvnet" ;;
  zookeeper) export KVNET_CLUSTER_STORE="zk://zookeeper:2181/kvnet" ;;
esac
# etcd and zookeeper are behind profiles of their names: with the profile active every command sees the
# service (`docker compose down` leaves the containers of inactive profiles running; docker-compose 1.29
# removed them anyway)
[ "$backend" = consul ] || export COMPOSE_PROFILES="$backend"

if [ -n "${KVNET_COMPOSE:-}" ]; then
  read -r -a COMPOSE_CMD <<<"$KVNET_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE_CMD=(docker-compose)
else
  echo "compose-demo: neither \`docker compose\` (Compose v2+) nor docker-compose is installed (scripts/setup.sh installs both)" >&2
  exit 2
fi

started=$(date +%s)
step() { printf '\n== [%3ss] %s\n' "$(($(date +%s) - started))" "$*"; }
compose() { "${COMPOSE_CMD[@]}" --project-directory "$REPO" "$@"; }
on() { local node="$1"; shift; compose exec -T "$node" "$@"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# retry "what" cmd…: runs cmd every second until it succeeds, for at most READY_TIMEOUT_S
retry() {
  local what="$1"; shift
  local deadline=$(($(date +%s) + READY_TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "timed out after ${READY_TIMEOUT_S} s: $what" >&2; "$@" || true; return 1; fi
    sleep 1
  done
}

result=FAIL
up=0
finish() {
  local code=$?
  trap - EXIT INT TERM
  if [ "$up" = 1 ] && [ "$result" != PASS ]; then
    echo; echo "--- node logs (last 30 lines each) ---"
    compose logs --no-color --tail 30 "${NODES[@]}" 2>&1 || true
    echo; echo "--- names: each node's resolver (kvnet dns status, its log) and its container's resolver route ---"
    for n in "${NODES[@]}"; do
      echo "[$n]"
      on "$n" kvnet dns status 2>&1 | head -40 || true
      on "$n" sh -c 'tail -n 15 /run/kvnet/kvnet-resolver.log' 2>&1 || true
      on "$n" docker exec "c-$n" ip route 2>&1 || true
    done
  fi
  if [ "$up" = 1 ]; then
    if [ "$keep" = 1 ]; then
      echo "kept running; remove with: COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME ${COMPOSE_CMD[*]} -f $COMPOSE_FILE down -v"
    else
      step "tear down (${COMPOSE_CMD[*]} down -v)"
      compose down -v --remove-orphans --timeout 20 || code=1
    fi
  fi
  [ "$build_only" = 1 ] && [ "$code" = 0 ] && result=PASS
  local what="compose demo"
  [ "$build_only" = 1 ] && what="compose images built"
  printf '\n%s: %s (%s, project %s) in %s s\n' "$result" "$what" "$backend" "$COMPOSE_PROJECT_NAME" "$(($(date +%s) - started))"
  [ "$result" = PASS ] || exit 1
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ---- images: only what is missing
step "images (backend $backend)"
echo "compose: ${COMPOSE_CMD[*]} ($("${COMPOSE_CMD[@]}" version 2>&1 | sed -n 1p))"
if [ "$offline" = 1 ]; then
  eval "$(bash "$REPO/deploy/compose/prepare-images.sh")"
fi
NODE_IMAGE="${KVNET_NODE_IMAGE:-kvnet/compose-node:0.1.0}"
AGENT_IMAGE="${KVNET_AGENT_IMAGE:-kvnet/agent:0.1.0}"
to_build=()
if ! have_image "$NODE_IMAGE"; then
  if ! have_image "$AGENT_IMAGE"; then
    echo "building the agent image $AGENT_IMAGE (deploy/Dockerfile)"
    docker build -f "$REPO/deploy/Dockerfile" -t "$AGENT_IMAGE" "$REPO"
  fi
  to_build+=(node1)
fi
case "$backend" in
  etcd) have_image "${KVNET_ETCD_IMAGE:-kvnet/compose-etcd:3.4}" || to_build+=(etcd) ;;
  zookeeper) have_image "${KVNET_ZOOKEEPER_IMAGE:-kvnet/compose-zookeeper:3.8}" || to_build+=(zookeeper) ;;
esac
if [ "${#to_build[@]}" -gt 0 ]; then
  echo "${COMPOSE_CMD[*]} build ${to_build[*]}"
  compose build "${to_build[@]}"
else
  echo "all images present ($NODE_IMAGE, the $backend image)"
fi
[ "$build_only" = 1 ] && exit 0

# ---- the harness
step "${COMPOSE_CMD[*]} up -d $backend ${NODES[*]}"
up=1
compose up -d --no-build "$backend" "${NODES[@]}"

step "waiting for the three agents to list each other (kvnet node ls on each node)"
three_nodes() {
  local out
  out="$(on "$1" kvnet node ls --format json)" || return 1
  for n in "${NODES[@]}"; do grep -Eq "\"name\": *\"$n\"" <<<"$out" || return 1; done
}
for n in "${NODES[@]}"; do retry "$n lists node1, node2 and node3" three_nodes "$n"; done
on node1 kvnet node ls --format json; echo
for n in "${NODES[@]}"; do on "$n" docker version --format "$n runs Docker {{.Server.Version}}"; done

step "node1: docker network create -d kvnet --ipam-driver kvnet --subnet $DEMO_SUBNET $DEMO_NETWORK"
on node1 docker network create -d kvnet --ipam-driver kvnet --subnet "$DEMO_SUBNET" "$DEMO_NETWORK"

listed() { on "$1" docker network ls --format '{{.Name}} {{.Driver}}' | grep -qx "$DEMO_NETWORK kvnet"; }
for n in node2 node3; do
  step "$n: docker network ls"
  retry "$DEMO_NETWORK listed on $n" listed "$n"
  on "$n" docker network ls --filter "name=^${DEMO_NETWORK}\$"
done

declare -A ip
for n in "${NODES[@]}"; do
  step "$n: docker run -d --name c-$n --network $DEMO_NETWORK $BUSYBOX_IMAGE sleep 3600"
  on "$n" docker run -d --name "c-$n" --network "$DEMO_NETWORK" "$BUSYBOX_IMAGE" sleep 3600
  ip[$n]="$(on "$n" docker inspect -f "{{(index .NetworkSettings.Networks \"$DEMO_NETWORK\").IPAddress}}" "c-$n")"
  [ -n "${ip[$n]}" ] || { echo "c-$n on $n has no address on $DEMO_NETWORK" >&2; exit 1; }
  echo "c-$n is ${ip[$n]}"
done

pings() { on "$1" docker exec "c-$1" ping -c 1 -W 2 "$2"; }
for pair in node1:node2 node2:node3 node3:node1; do
  from="${pair%%:*}" to="${pair##*:}"
  step "c-$from (on $from) pings c-$to (on $to) at ${ip[$to]}"
  retry "c-$from pings ${ip[$to]}" pings "$from" "${ip[$to]}"
  on "$from" docker exec "c-$from" ping -c 3 -W 2 "${ip[$to]}"
done

# names across nodes: Docker's resolver in each container forwards what it does not know (the other
# nodes' containers) to kvnet's resolver, as the nodes' daemon.json says ("dns": ["169.254.53.53"])
pings_name() { on "$1" docker exec "c-$1" ping -c 1 -W 2 "c-$2"; }
for pair in node1:node2 node2:node3 node3:node1; do
  from="${pair%%:*}" to="${pair##*:}"
  step "c-$from (on $from) pings c-$to (on $to) by name"
  retry "c-$from pings c-$to by name" pings_name "$from" "$to"
  on "$from" docker exec "c-$from" ping -c 3 -W 2 "c-$to"
done

step "clean up the demo's containers and network"
for n in "${NODES[@]}"; do on "$n" docker rm -f "c-$n" >/dev/null; done
on node1 docker network rm "$DEMO_NETWORK"
result=PASS
