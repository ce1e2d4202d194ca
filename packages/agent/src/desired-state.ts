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

import type { DesiredEndpoint, DesiredNetwork, DesiredPeer, DesiredState } from '@kvnet/dataplane';
import type { ClusterView } from './cluster-view.ts';
import { byAge } from './egress.ts';
import { endpointAddresses, networkPools, type EndpointRecord } from './layout.ts';

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
      const vtep = view.nodes.get(e.node)?.advertise ?? e.vtep;
      if (!vtep) continue;
      const { v4, v6 } = endpointAddresses(e);
      peers.push({ ...(v4 ? { ip: bare(v4) } : {}), ...(v6 ? { ipv6: bare(v6) } : {}), mac: e.mac, vtep });
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
