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
  /** `ip/len`. */
  address: string;
  ip: string;
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
