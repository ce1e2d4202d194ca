#!/bin/bash
# Entrypoint of a kvnet harness node (deploy/compose/node.Dockerfile): a small supervisor for two
# processes sharing the node's network and mount namespaces.
#   1. dockerd (vfs storage: overlay on the outer daemon's overlay fails; no default bridge: the demo's
#      containers use kvnet networks only), waited for, and a busybox image imported from busybox-static
#      (KVNET_BUSYBOX_IMAGE, default busybox:local) so the node runs containers without a registry;
#   2. once the cluster store accepts TCP connections, the kvnet agent through the agent image's own
#      entrypoint (CLUSTER_STORE, CLUSTER_ADVERTISE, NODE_NAME, DOCKER_PLUGIN, LOG_LEVEL, EXTRA_ARGS),
#      serving dockerd's network + IPAM plugin at /run/docker/plugins/kvnet.sock.
# Either process exiting stops the node (compose shows which); SIGTERM stops the agent, then dockerd.
set -euo pipefail

BUSYBOX_IMAGE="${KVNET_BUSYBOX_IMAGE:-busybox:local}"
DOCKERD_READY_TIMEOUT_S="${KVNET_DOCKERD_READY_TIMEOUT_S:-120}"
STORE_READY_TIMEOUT_S="${KVNET_STORE_READY_TIMEOUT_S:-180}"
export NODE_NAME="${NODE_NAME:-$(hostname)}"
export DOCKER_PLUGIN="${DOCKER_PLUGIN:-/run/docker/plugins/kvnet.sock}"
export CLUSTER_ADVERTISE="${CLUSTER_ADVERTISE:-eth0}"

log() { printf '[kvnet-node %s] %s\n' "$NODE_NAME" "$*" >&2; }
die() { log "$*"; exit 1; }

[ -n "${CLUSTER_STORE:-}" ] || die "CLUSTER_STORE is not set (e.g. consul://consul:8500/kvnet)"
mkdir -p /run/docker/plugins /var/lib/kvnet
# Docker mounts /proc/sys read-only (compose cannot ask for `systempaths=unconfined`); the agent and
# dockerd write forwarding and neighbour sysctls of the node's own network namespace.
if [ ! -w /proc/sys/net/ipv4/ip_forward ]; then
  mount -o remount,rw /proc/sys || die "cannot remount /proc/sys read-write (the node needs CAP_SYS_ADMIN and apparmor=unconfined)"
fi

dockerd_pid=""
agent_pid=""
stop_all() {
  trap - TERM INT
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  [ -n "$dockerd_pid" ] && kill -TERM "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null || true
}
trap 'log "stopping"; stop_all; exit 0' TERM INT

log "starting dockerd (vfs)"
dockerd --storage-driver vfs --bridge none --log-level "${KVNET_DOCKERD_LOG_LEVEL:-warn}" ${KVNET_DOCKERD_ARGS:-} &
dockerd_pid=$!
for ((i = 0; ; i++)); do
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited before answering (see the lines above)"
  [ "$i" -lt $((DOCKERD_READY_TIMEOUT_S * 2)) ] || die "dockerd did not answer within ${DOCKERD_READY_TIMEOUT_S} s"
  sleep 0.5
done

if ! docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
  rootfs="$(mktemp -d)"
  mkdir -p "$rootfs/bin"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in sh ip ping cat sleep ifconfig route hostname true wget nc ls; do ln -s busybox "$rootfs/bin/$applet"; done
  tar -C "$rootfs" -c . | docker import - "$BUSYBOX_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "imported $BUSYBOX_IMAGE from busybox-static"
fi

# The agent needs the store at start; compose starts services in parallel, so wait for the first
# host:port of the URL (scheme://[user:pass@]host[:port][,host…]/prefix) to accept connections.
store_addr="${CLUSTER_STORE#*://}"; store_addr="${store_addr%%/*}"; store_addr="${store_addr##*@}"; store_addr="${store_addr%%,*}"
case "$CLUSTER_STORE" in
  consul://*) default_port=8500 ;; etcd://*) default_port=2379 ;; zk://*|zookeeper://*) default_port=2181 ;; *) default_port="" ;;
esac
if [ -n "$default_port" ]; then
  store_host="${store_addr%%:*}"; store_port="${store_addr#*:}"; [ "$store_port" = "$store_addr" ] && store_port="$default_port"
  log "waiting for the cluster store at $store_host:$store_port"
  for ((i = 0; ; i++)); do
    (exec 3<>"/dev/tcp/$store_host/$store_port") 2>/dev/null && break
    [ "$i" -lt $((STORE_READY_TIMEOUT_S * 2)) ] || die "cluster store $CLUSTER_STORE did not accept connections on $store_host:$store_port within ${STORE_READY_TIMEOUT_S} s"
    sleep 0.5
  done
fi

log "starting the kvnet agent (store $CLUSTER_STORE, advertise $CLUSTER_ADVERTISE)"
/usr/local/bin/kvnet-entrypoint "$@" &
agent_pid=$!

# whichever exits first takes the node down, so compose shows the failure instead of a half-node
set +e
wait -n "$dockerd_pid" "$agent_pid"
code=$?
if kill -0 "$agent_pid" 2>/dev/null; then log "dockerd exited ($code)"; else log "the kvnet agent exited ($code)"; fi
stop_all
exit "$code"
