#!/usr/bin/env bash
# Makes the managed Docker plugin from the agent image:
#   deploy/plugin/make-plugin.sh [IMAGE [PLUGIN]]      # defaults: kvnet/agent:0.1.0, kvnet
# then, on every host:
#   docker plugin set kvnet CLUSTER_STORE=etcd://10.0.0.5:2379/kvnet CLUSTER_ADVERTISE=eth0
#   docker plugin enable kvnet
# (`docker plugin push` after this to share it through a registry.) DOCKER="docker -H …" picks the daemon.
# The rootfs is the image's filesystem (`docker create` + `docker export`), config.json is this directory's
# with DOCKER_DRIVER_NAME set to the reference dockerd registers the plugin's drivers under: PLUGIN as given
# when its last path component has a tag, else PLUGIN:latest (kvnet -> kvnet:latest, reg:5000/x/kvnet ->
# reg:5000/x/kvnet:latest). Without it the agent would mirror networks into other hosts' dockerds under
# the name "kvnet", which no managed plugin answers to.
set -euo pipefail
IMAGE="${1:-kvnet/agent:0.1.0}"
PLUGIN="${2:-kvnet}"
DOCKER="${DOCKER:-docker}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d /tmp/kvnet-plugin.XXXXXX)"
cid=""
cleanup() { [ -n "$cid" ] && $DOCKER rm -f "$cid" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT
cid="$($DOCKER create --network none "$IMAGE")"
mkdir "$work/rootfs"
$DOCKER export "$cid" | tar -C "$work/rootfs" -x
# the propagated mount (overlay namespaces survive a plugin restart) and the plugin socket's directory
mkdir -p "$work/rootfs/run/netns" "$work/rootfs/run/docker/plugins"
case "${PLUGIN##*/}" in
  *:*) driver_name="$PLUGIN" ;;
  *) driver_name="$PLUGIN:latest" ;;
esac
# the "value" line that follows "name": "DOCKER_DRIVER_NAME" (config.json keeps one env entry per block)
sed '/"name": "DOCKER_DRIVER_NAME"/,/"value":/ s|"value": "[^"]*"|"value": "'"$driver_name"'"|' \
  "$here/config.json" >"$work/config.json"
grep -q "\"value\": \"$driver_name\"" "$work/config.json" || { echo "make-plugin.sh: could not set DOCKER_DRIVER_NAME=$driver_name in config.json" >&2; exit 1; }
$DOCKER plugin create "$PLUGIN" "$work" >/dev/null
echo "$PLUGIN"
