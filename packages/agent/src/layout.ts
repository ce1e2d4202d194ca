/**
 * The agent's key layout below the store prefix, and the JSON records stored there. Every agent of a
 * cluster reads and writes these keys; README.md documents them for operators.
 *
 * | key | value | lifetime |
 * |---|---|---|
 * | `networks/<nid>` | {@link NetworkRecord} | until `network rm` |
 * | `netnames/<name>` | nid (text) | created in the same txn as the network, create-only |
 * | `endpoints/<nid>/<eid>` | {@link EndpointRecord} | until disconnect or reaping |
 * | `epnames/<nid>/<name>` | eid (text) | created in the same txn as the endpoint, create-only |
 * | `nodes/<node name>` | {@link NodeRecord} | on the agent's lease (ephemeral) |
 * | `vteps/<advertise ip>` | {@link VtepClaim} | on the agent's lease (ephemeral) |
 * | `restarting/<node name>` | {@link RestartMarker} | written by an agent that stops cleanly; removed when it starts |
 * | `reaped/<node name>/<eid>` | {@link EndpointRecord} | written by the reaper; removed by the node when it returns, or by the janitor after an hour |
 * | `cluster/vxlan-port` | {@link VxlanPortRecord} | written once, create-only, by the first agent of the cluster; never changed |
 *
 * Addresses of both families: a network's `poolId`/`subnet`/`gateway`/… are its first pool (IPv4 when it
 * has one, else IPv6) and its `*6` fields its IPv6 pool whenever it has one (so an IPv6-only network
 * has the same pool in both); likewise an endpoint's `address`/`ip` and `address6`/`ip6`. Records
 * written before IPv6 existed have only the first set, and no `mtu`.
 */

import { randomBytes } from 'node:crypto';
import { decodeJson, decodeText, encodeJson, encodeText } from '@kvnet/store';

export const NETWORKS = 'networks';
export const NETNAMES = 'netnames';
export const ENDPOINTS = 'endpoints';
export const EPNAMES = 'epnames';
export const NODES = 'nodes';
export const VTEPS = 'vteps';
export const REAPED = 'reaped';
export const RESTARTING = 'restarting';
export const CLUSTER = 'cluster';

/** Network and endpoint ids: 64 lowercase hex digits, like Docker's. */
export const ID_PATTERN = /^[0-9a-f]{64}$/;
/** Network and endpoint names (Docker's rule), at most {@link NAME_MAX_CHARS}. */
export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
export const NAME_MAX_CHARS = 64;

export function newId(): string {
  return randomBytes(32).toString('hex');
}

export const keys = {
  network: (nid: string) => `${NETWORKS}/${nid}`,
  netname: (name: string) => `${NETNAMES}/${name}`,
  endpoint: (nid: string, eid: string) => `${ENDPOINTS}/${nid}/${eid}`,
  endpointsOf: (nid: string) => `${ENDPOINTS}/${nid}`,
  epname: (nid: string, name: string) => `${EPNAMES}/${nid}/${name}`,
  node: (name: string) => `${NODES}/${name}`,
  vtep: (ip: string) => `${VTEPS}/${ip}`,
  reaped: (node: string, eid: string) => `${REAPED}/${node}/${eid}`,
  restarting: (node: string) => `${RESTARTING}/${node}`,
  reapedOf: (node: string) => `${REAPED}/${node}`,
  /** The anchor of every node's tombstone watch on a store whose empty-range watches wake on any write (Consul): the key `reaped` itself. */
  reapedAnchor: () => REAPED,
  vxlanPort: () => `${CLUSTER}/vxlan-port`,
};

export interface NetworkRecord {
  id: string;
  name: string;
  vni: number;
  /** IPAM pool holding the subnet. */
  poolId: string;
  subnet: string;
  /** Bare IP. */
  gateway: string;
  ipRange?: string;
  auxAddresses: Record<string, string>;
  internal: boolean;
  labels: Record<string, string>;
  options: Record<string, string>;
  createdAt: string;
  /** Node that created it. */
  createdBy: string;
  /** Set while `network rm` checks for endpoints; connects are refused meanwhile. */
  deleting?: boolean;
  /**
   * MTU of every overlay interface of the network, on every host (`--mtu`,
   * `com.docker.network.driver.mtu`, else the creating host's underlay MTU − 50, or − 70 over IPv6).
   * Absent in records written before networks carried one: each host then uses its own default.
   */
  mtu?: number;
  /** The IPv6 pool (dual stack: the second pool; IPv6-only: the same as `poolId`). */
  poolId6?: string;
  /** The IPv6 subnet, e.g. `fd00:20::/64`. */
  subnet6?: string;
  /** The IPv6 gateway, bare. */
  gateway6?: string;
  ipRange6?: string;
  auxAddresses6?: Record<string, string>;
}

export interface EndpointRecord {
  id: string;
  name: string;
  /**
   * More names of the endpoint on its network, resolved like `name` by the names face: Docker's
   * `--network-alias` / `docker network connect --alias`, `kvnet network connect --alias`. Absent in
   * records written before aliases existed, and on Docker endpoints until they are learned from dockerd.
   */
  aliases?: string[];
  network: string;
  /** Node name of the host the endpoint lives on. */
  node: string;
  /** That node's persistent identity (see local-state.ts). */
  nodeId: string;
  /** `ip/len`: the IPv4 address, or for an endpoint of an IPv6-only network its IPv6 one. */
  address: string;
  /** `address` without the prefix length. */
  ip: string;
  /** `ip/len`: the IPv6 address, whenever the endpoint has one. */
  address6?: string;
  /** `address6` without the prefix length. */
  ip6?: string;
  /** `endpointMac` of `@kvnet/netaddr` at creation (`02:42:` + the IPv4 bytes when it has an IPv4 address). */
  mac: string;
  /** Standalone endpoints: the sandbox's netns path and the interface name in it. */
  netns?: string;
  ifname?: string;
  /**
   * Runtime endpoints (Docker): the host-side interface the data plane leaves in the host namespace
   * for the runtime to move into the container ("handoff" mode); such a record has no `netns`.
   */
  handoff?: string;
  /**
   * The node's advertise address when the endpoint was created. Peers use the live node record's
   * address when there is one, else this: a node whose record lapsed briefly (an agent restart longer
   * than its TTL, a store outage) keeps its peers programmed everywhere until it is reaped.
   */
  vtep?: string;
  createdAt: string;
  /** Endpoints made by the CNI plugin: the attachment that owns them (see {@link CniAttachmentRef}). */
  cni?: CniAttachmentRef;
}

/**
 * The CNI attachment an endpoint was made for: what DEL, CHECK and GC find it again by. The CNI spec
 * keys an attachment by (network configuration name, `CNI_CONTAINERID`, `CNI_IFNAME`); the kvnet
 * network is the endpoint's own, and the node is the endpoint's `node`.
 */
export interface CniAttachmentRef {
  /** `CNI_CONTAINERID`. */
  containerId: string;
  /** `CNI_IFNAME`: the interface inside the container. */
  ifname: string;
  /** The CNI network configuration's `name` (a GC for that configuration touches only its own attachments). */
  netconf: string;
}

export interface NodeRecord {
  name: string;
  /** Underlay IPv4 address (the VTEP). */
  advertise: string;
  /** `ip:port` as given, for display. */
  advertiseAddr: string;
  version: string;
  startedAt: string;
  nodeId: string;
}

/**
 * Left by an agent that stopped cleanly (a restart or upgrade): its node record will lapse, but its
 * endpoints are not reaped before `until`, so a restart slower than the TTL does not cost traffic.
 */
export interface RestartMarker {
  node: string;
  nodeId: string;
  /** ISO time. */
  until: string;
}

export interface VtepClaim {
  node: string;
  nodeId: string;
}

/** The cluster's VXLAN UDP port (`cluster/vxlan-port`), fixed by the first agent that started. */
export interface VxlanPortRecord {
  port: number;
  /** Node that recorded it, and when (ISO time). */
  setBy: string;
  setAt: string;
}

/** One IPAM pool of a network, as its record names it. */
export interface NetworkPool {
  readonly family: 4 | 6;
  readonly poolId: string;
  readonly subnet: string;
  /** Bare IP. */
  readonly gateway: string;
  readonly ipRange?: string;
  readonly auxAddresses: Record<string, string>;
}

/** The family of an address or CIDR text (`:` only occurs in IPv6). */
export function familyOf(text: string): 4 | 6 {
  return text.includes(':') ? 6 : 4;
}

/** The network's pools, IPv4 first; one per family (an IPv6-only network's pool once). */
export function networkPools(n: NetworkRecord): NetworkPool[] {
  const first: NetworkPool = { family: familyOf(n.subnet), poolId: n.poolId, subnet: n.subnet, gateway: n.gateway, ...(n.ipRange ? { ipRange: n.ipRange } : {}), auxAddresses: n.auxAddresses ?? {} };
  const pools = [first];
  if (n.poolId6 && n.subnet6 && n.gateway6 && n.poolId6 !== n.poolId) {
    pools.push({ family: 6, poolId: n.poolId6, subnet: n.subnet6, gateway: n.gateway6, ...(n.ipRange6 ? { ipRange: n.ipRange6 } : {}), auxAddresses: n.auxAddresses6 ?? {} });
  }
  return pools;
}

/** The network's pool of one family, if it has one. */
export function networkPool(n: NetworkRecord, family: 4 | 6): NetworkPool | undefined {
  return networkPools(n).find((p) => p.family === family);
}

/** An endpoint's addresses by family (`ip/len`), whatever fields the record was written with. */
export function endpointAddresses(e: Pick<EndpointRecord, 'address' | 'address6'>): { readonly v4?: string; readonly v6?: string } {
  const v4 = familyOf(e.address) === 4 ? e.address : undefined;
  const v6 = e.address6 ?? (familyOf(e.address) === 6 ? e.address : undefined);
  return { ...(v4 ? { v4 } : {}), ...(v6 ? { v6 } : {}) };
}

export const encodeRecord = encodeJson;
export const decodeRecord = <T>(value: Uint8Array, key: string): T => decodeJson<T>(value, key);
export { encodeText, decodeText };

/** `endpoints/<nid>/<eid>` → {nid, eid}; undefined for anything else. */
export function parseEndpointKey(key: string): { nid: string; eid: string } | undefined {
  const parts = key.split('/');
  if (parts.length !== 3 || parts[0] !== ENDPOINTS) return undefined;
  return { nid: parts[1]!, eid: parts[2]! };
}

/** The last segment of a key. */
export function lastSegment(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}
