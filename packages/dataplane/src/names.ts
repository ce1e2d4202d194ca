/**
 * The naming scheme of every kernel object the data plane creates. Names are derived from the
 * instance prefix and the ids only, so an agent that restarts with the same prefix finds its objects
 * again, and two instances with different prefixes never touch each other's objects.
 *
 * | object | name | where |
 * |---|---|---|
 * | overlay namespace | `<prefix>-<network id>` (full id: two networks can never share one) | /run/netns |
 * | bridge, VXLAN device | `br0`, `vxlan0` | inside the overlay namespace |
 * | endpoint veth, overlay side | `ve<endpoint id[:12]>` | inside the overlay namespace |
 * | egress veth, host side | `<prefix>-g<endpoint id[:7]>` (≤ 15 bytes for a prefix of ≤ 6) | host namespace |
 * | iptables chains | `<PREFIX>-FORWARD` (filter), `<PREFIX>-POSTROUTING` (nat) | host namespace |
 *
 * The `-` after the prefix cannot occur in a prefix, so prefix `ab` never matches objects of prefix `abe`.
 * Links also carry an ownership marker in their alias (`ip link set … alias`), written last, once the
 * link is fully configured: see {@link endpointMarker}.
 */

/** Linux IFNAMSIZ − 1. */
export const IFNAME_MAX_BYTES = 15;
export const PREFIX_PATTERN = /^[a-z0-9]{1,6}$/;
/** Network and endpoint ids: lowercase letters and digits (Docker's are 64 hex digits). */
export const ID_PATTERN = /^[0-9a-z]{1,64}$/;
export const BRIDGE_IFNAME = 'br0';
export const VXLAN_IFNAME = 'vxlan0';
const OVERLAY_VETH_ID_CHARS = 12;
const EGRESS_ID_CHARS = 7;
const MARKER_TAG = 'kvnet';

/** The overlay namespace of a network: `<prefix>-<network id>`. */
export function overlayNetnsName(prefix: string, networkId: string): string {
  return `${prefix}-${networkId}`;
}

/** The network id of an overlay namespace name of this prefix, or undefined when it is not one. */
export function networkIdOfNetns(prefix: string, netnsName: string): string | undefined {
  if (!netnsName.startsWith(`${prefix}-`)) return undefined;
  const id = netnsName.slice(prefix.length + 1);
  return ID_PATTERN.test(id) ? id : undefined;
}

/** The overlay-side end of an endpoint's veth pair. */
export function overlayVethName(endpointId: string): string {
  return `ve${endpointId.slice(0, OVERLAY_VETH_ID_CHARS)}`;
}

/** The host-side end of an endpoint's egress veth pair (a port of the gateway bridge). */
export function egressHostIfname(prefix: string, endpointId: string): string {
  return `${prefix}-g${endpointId.slice(0, EGRESS_ID_CHARS)}`;
}

/** Whether a host link name has the shape of this prefix's egress links. */
export function isEgressHostIfname(prefix: string, name: string): boolean {
  return name.startsWith(`${prefix}-g`) && name.length <= IFNAME_MAX_BYTES;
}

export function iptablesChains(prefix: string): { forward: string; postrouting: string } {
  const p = prefix.toUpperCase();
  return { forward: `${p}-FORWARD`, postrouting: `${p}-POSTROUTING` };
}

/** Alias written on a finished endpoint veth (overlay side): `kvnet:ep:<endpoint id>:<config digest>`. */
export function endpointMarker(endpointId: string, digest: string): string {
  return `${MARKER_TAG}:ep:${endpointId}:${digest}`;
}

/** Alias written on a finished egress veth (host side): `kvnet:eg:<prefix>:<endpoint id>:<config digest>`. */
export function egressMarker(prefix: string, endpointId: string, digest: string): string {
  return `${MARKER_TAG}:eg:${prefix}:${endpointId}:${digest}`;
}

/** Alias of a gateway bridge this prefix created (so `destroyAll` removes only its own). */
export function gatewayBridgeMarker(prefix: string): string {
  return `${MARKER_TAG}:gw:${prefix}`;
}

export interface ParsedMarker {
  readonly type: 'ep' | 'eg';
  readonly prefix?: string;
  readonly endpointId: string;
  readonly digest: string;
}

/** Parses an alias written by {@link endpointMarker} or {@link egressMarker}. */
export function parseMarker(alias: string | undefined): ParsedMarker | undefined {
  if (!alias) return undefined;
  const parts = alias.split(':');
  if (parts[0] !== MARKER_TAG) return undefined;
  if (parts[1] === 'ep' && parts.length === 4) return { type: 'ep', endpointId: parts[2]!, digest: parts[3]! };
  if (parts[1] === 'eg' && parts.length === 5) {
    return { type: 'eg', prefix: parts[2]!, endpointId: parts[3]!, digest: parts[4]! };
  }
  return undefined;
}

const IFNAME_CHARS = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Why the kernel (or iproute2) would refuse `name` as an interface name, or undefined when it is fine. */
export function ifnameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (Buffer.byteLength(name) > IFNAME_MAX_BYTES) return `is longer than ${IFNAME_MAX_BYTES} bytes (the kernel's limit)`;
  if (!IFNAME_CHARS.test(name)) return 'may hold only letters, digits, "_", "." and "-", starting with a letter or digit';
  return undefined;
}

const NETNS_PATH = /^\/[^\s"'\\]+$/;
const NETNS_NAME = /^[A-Za-z0-9_.-]+$/;

/** Why `path` cannot name a network namespace file, or undefined when it is fine. */
export function netnsPathProblem(path: string): string | undefined {
  if (!path.startsWith('/')) return 'is not an absolute path';
  if (!NETNS_PATH.test(path)) return 'contains whitespace, quotes or backslashes';
  return undefined;
}

/** Why `name` cannot be a netns name under /run/netns, or undefined when it is fine. */
export function netnsNameProblem(name: string): string | undefined {
  if (!NETNS_NAME.test(name) || name === '.' || name === '..') return 'is not a plain name under /run/netns';
  return undefined;
}
