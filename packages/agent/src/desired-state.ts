/**
 * Pure: the data plane's desired state for one host, from the cluster view. Networks with at least
 * one local endpoint; their local endpoints — standalone sandboxes (records with `netns`, with egress
 * on non-internal networks when this host has a gateway bridge address for them) first, then runtime
 * endpoints (records with `handoff` and no `netns`: the container side of the veth is left in the
 * host namespace under that name, with MAC and MTU set, for the runtime — dockerd — to move into the
 * container); every endpoint on another node as
 * a peer, at that node's live advertise address or, while its record is missing, the address recorded
 * in the endpoint. A node record that lapses for a moment (an agent restart longer than the TTL, a
 * store outage during which every lease expired) must not cut traffic; a dead node's entries go when
 * the reaper deletes its endpoints.
 *
 * Both families: a network's subnets are all its pools (IPv4 and IPv6) with their gateways; an
 * endpoint carries `address` and/or `addressIPv6`, a peer `ip` and/or `ipv6` (one NDP entry beside
 * the ARP one); the network's recorded MTU is passed as is (old records without one get each host's
 * default).
 */

import type { DesiredEndpoint, DesiredNetwork, DesiredPeer, DesiredState, PeerDelta } from '@kvnet/dataplane';
import { endpointsOfNode, type ClusterView, type ViewChange } from './cluster-view.ts';
import { byAge } from './egress.ts';
import { endpointAddresses, networkPools, type EndpointRecord, type NodeRecord } from './layout.ts';

/** Name of the egress interface inside a container (Docker's eth1). */
export const EGRESS_IFNAME = 'eth1';
export const DEFAULT_IFNAME = 'eth0';

export interface DesiredStateInput {
  readonly view: ClusterView;
  /** This node's name. */
  readonly node: string;
  /** Gateway bridge addresses of local endpoints (eid → `ip/len`); absent = no egress. */
  readonly egress: ReadonlyMap<string, string>;
  /** IPv6 gateway bridge addresses of local endpoints that have IPv4 egress too (eid → `ip/len`). */
  readonly egress6?: ReadonlyMap<string, string>;
}

/** The data plane's address fields of an endpoint record. */
function addressFields(e: EndpointRecord): { address?: string; addressIPv6?: string } {
  const { v4, v6 } = endpointAddresses(e);
  return { ...(v4 ? { address: v4 } : {}), ...(v6 ? { addressIPv6: v6 } : {}) };
}

const bare = (cidr: string): string => cidr.slice(0, cidr.indexOf('/'));

export interface DesiredStateResult {
  readonly state: DesiredState;
  /** Number of peers in the state. */
  readonly peers: number;
  /** Local endpoints of this node (also those whose network record is missing). */
  readonly localEndpoints: readonly EndpointRecord[];
}

export function computeDesiredState(input: DesiredStateInput): DesiredStateResult {
  const { view, node } = input;
  const networks: DesiredNetwork[] = [];
  const localEndpoints: EndpointRecord[] = [];
  let peerCount = 0;
  const nids = [...view.endpoints.keys()].sort();
  for (const nid of nids) {
    // Oldest first: when two endpoints clash (a transient race), the data plane keeps the first.
    const eps = [...view.endpoints.get(nid)!.values()].sort(byAge);
    const local = eps.filter((e) => e.node === node);
    localEndpoints.push(...local);
    const net = view.networks.get(nid);
    if (!net || local.length === 0) continue;
    const endpoints: DesiredEndpoint[] = [];
    for (const e of local) {
      if (!e.netns) continue; // a runtime endpoint (below), or a record with nothing to plumb here
      const egressAddress = net.internal ? undefined : input.egress.get(e.id);
      const egressIPv6 = egressAddress ? input.egress6?.get(e.id) : undefined;
      endpoints.push({
        id: e.id,
        ...addressFields(e),
        mac: e.mac,
        sandbox: {
          path: e.netns,
          ifname: e.ifname ?? DEFAULT_IFNAME,
          ...(egressAddress ? { egress: { ifname: EGRESS_IFNAME, address: egressAddress, ...(egressIPv6 ? { addressIPv6: egressIPv6 } : {}) } } : {}),
        },
      });
    }
    for (const e of local) if (!e.netns && e.handoff) endpoints.push({ id: e.id, ...addressFields(e), mac: e.mac, handoff: { hostIfname: e.handoff } });
    if (endpoints.length === 0) continue;
    const peers: DesiredPeer[] = [];
    for (const e of eps) {
      if (e.node === node) continue;
      const peer = desiredPeer(e, view.nodes);
      if (peer) peers.push(peer);
    }
    peerCount += peers.length;
    networks.push({
      id: nid,
      vni: net.vni,
      internal: net.internal,
      subnets: networkPools(net).map((p) => ({ cidr: p.subnet, gateway: p.gateway })),
      ...(net.mtu !== undefined ? { mtu: net.mtu } : {}),
      endpoints,
      peers,
    });
  }
  return { state: { networks }, peers: peerCount, localEndpoints };
}

/**
 * A remote endpoint as a peer: at its node's live advertise address, or while the node record is
 * missing at the address recorded in the endpoint; undefined when there is neither.
 */
export function desiredPeer(e: EndpointRecord, nodes: ReadonlyMap<string, NodeRecord>): DesiredPeer | undefined {
  const vtep = nodes.get(e.node)?.advertise ?? e.vtep;
  if (!vtep) return undefined;
  const { v4, v6 } = endpointAddresses(e);
  return { ...(v4 ? { ip: bare(v4) } : {}), ...(v6 ? { ipv6: bare(v6) } : {}), mac: e.mac, vtep };
}

function samePeer(a: DesiredPeer | undefined, b: DesiredPeer | undefined): boolean {
  return a === b || (a !== undefined && b !== undefined && JSON.stringify(a) === JSON.stringify(b));
}

export interface DesiredDeltaInput {
  /** The view the last applied desired state was computed from, and the current one. */
  readonly before: ClusterView;
  readonly after: ClusterView;
  /** Everything that changed between the two. */
  readonly changes: readonly ViewChange[];
  /** This node's name. */
  readonly node: string;
  /** Networks in the last applied desired state. */
  readonly programmed: ReadonlySet<string>;
}

/** How the desired state moved: peers only (the data plane's incremental path), or anything else. */
export type DesiredDelta =
  | {
      readonly kind: 'peers';
      /** Per programmed network whose peers changed; empty when nothing this host programs changed. */
      readonly deltas: readonly PeerDelta[];
      /** Change in the number of peers. */
      readonly peerCount: number;
    }
  | { readonly kind: 'full'; readonly reason: string };

/**
 * Pure: what `changes` mean for this host's desired state, without computing it. The result equals the
 * difference between {@link computeDesiredState} of `before` and of `after` (the tests hold it to
 * that) when it is `peers`: a remote endpoint that came, went or moved in a network this host
 * programs, a node whose address changed. A change to a local endpoint, or to the record of a network
 * this host has endpoints on, is `full`. A change in a network this host does not program costs
 * nothing but this look: a host without endpoints on a network does no work for its churn.
 */
export function desiredDelta(input: DesiredDeltaInput): DesiredDelta {
  const { before, after, node, programmed } = input;
  const hasLocal = (view: ClusterView, nid: string): boolean => endpointsOfNode(view, node).some((e) => e.network === nid);
  const deltas = new Map<string, { remove: DesiredPeer[]; add: DesiredPeer[] }>();
  const delta = (nid: string): { remove: DesiredPeer[]; add: DesiredPeer[] } => {
    let d = deltas.get(nid);
    if (!d) deltas.set(nid, (d = { remove: [], add: [] }));
    return d;
  };
  const seen = new Set<string>();
  let peerCount = 0;
  const move = (nid: string, was: DesiredPeer | undefined, is: DesiredPeer | undefined): void => {
    if (samePeer(was, is)) return;
    if (was) {
      delta(nid).remove.push(was);
      peerCount--;
    }
    if (is) {
      delta(nid).add.push(is);
      peerCount++;
    }
  };
  for (const change of input.changes) {
    for (const nid of change.networks) {
      if (programmed.has(nid) || hasLocal(after, nid) || hasLocal(before, nid)) return { kind: 'full', reason: `network ${nid} changed` };
    }
    for (const [nid, eids] of change.endpoints) {
      for (const eid of eids) {
        const key = `${nid}/${eid}`;
        if (seen.has(key)) continue;
        seen.add(key);
        const was = before.endpoints.get(nid)?.get(eid);
        const is = after.endpoints.get(nid)?.get(eid);
        if (was?.node === node || is?.node === node) return { kind: 'full', reason: `local endpoint ${eid} changed` };
        if (!programmed.has(nid)) continue;
        move(nid, was && desiredPeer(was, before.nodes), is && desiredPeer(is, after.nodes));
      }
    }
  }
  // A node whose record came, went or moved: its endpoints' peers follow its address.
  const nodes = new Set(input.changes.flatMap((c) => [...c.nodes]));
  for (const name of nodes) {
    if (name === node) continue;
    for (const e of endpointsOfNode(after, name)) {
      if (!programmed.has(e.network) || seen.has(`${e.network}/${e.id}`)) continue;
      move(e.network, desiredPeer(e, before.nodes), desiredPeer(e, after.nodes));
    }
  }
  return { kind: 'peers', deltas: [...deltas].map(([network, d]) => ({ network, ...d })), peerCount };
}
