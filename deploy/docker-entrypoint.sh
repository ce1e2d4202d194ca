#!/bin/sh
# kvnet image entrypoint.
#   (no arguments) or arguments starting with "-"  ->  kvnet agent [ARGS]
#   anything else                                  ->  kvnet ARGS   (e.g. `docker exec … kvnet network ls`)
# Settings from the environment (flags win): CLUSTER_STORE, CLUSTER_ADVERTISE, NODE_NAME map onto the
# agent's own KVNET_CLUSTER_STORE, KVNET_CLUSTER_ADVERTISE, KVNET_NODE_NAME; DOCKER_PLUGIN (a socket path
# or "off"), DOCKER_SOCKET, DOCKER_DRIVER_NAME (the name dockerd knows the plugin by: kvnet for the socket
# plugin, the plugin reference such as kvnet:latest for the managed plugin), LOG_LEVEL and EXTRA_ARGS
# (split on spaces) become flags.
set -e
[ -n "${CLUSTER_STORE:-}" ] && [ -z "${KVNET_CLUSTER_STORE:-}" ] && export KVNET_CLUSTER_STORE="$CLUSTER_STORE"
[ -n "${CLUSTER_ADVERTISE:-}" ] && [ -z "${KVNET_CLUSTER_ADVERTISE:-}" ] && export KVNET_CLUSTER_ADVERTISE="$CLUSTER_ADVERTISE"
[ -n "${NODE_NAME:-}" ] && [ -z "${KVNET_NODE_NAME:-}" ] && export KVNET_NODE_NAME="$NODE_NAME"
KVNET="/usr/local/bin/node --max-semi-space-size=1 /opt/kvnet/dist/kvnet.mjs"
case "${1:-}" in
  ''|-*)
    set -- agent \
      ${DOCKER_PLUGIN:+--docker-plugin "$DOCKER_PLUGIN"} \
      ${DOCKER_SOCKET:+--docker-socket "$DOCKER_SOCKET"} \
      ${DOCKER_DRIVER_NAME:+--docker-driver-name "$DOCKER_DRIVER_NAME"} \
      ${LOG_LEVEL:+--log-level "$LOG_LEVEL"} \
      ${EXTRA_ARGS:-} "$@"
    ;;
esac
exec $KVNET "$@"
