/**
 * Pure: adds this node's Docker endpoints to the data plane's desired state. A Docker endpoint
 * (a record with `handoff`) becomes a data plane endpoint in "handoff" mode — the container side of
 * the veth is left in the host namespace under that name, with MAC and MTU set, for dockerd to move
 * into the container at Join. `computeDesiredState` (desired-state.ts) skips records without a netns,
 * so a network whose only local endpoints are Docker's is added here whole, with its peers computed by
 * the same rule (the live node record's address, else the one recorded in the endpoint).
 */

import type { DesiredEndpoint, DesiredNetwork, DesiredPeer, DesiredState } from '@kvnet/dataplane';
import type { ClusterView } from './cluster-view.ts';
import type { DockerEndpointRecord } from './docker-backend.ts';
import { byAge } from './egress.ts';

export function withDockerEndpoints(state: DesiredState, view: ClusterView, node: string): DesiredState {
  const byId = new Map(state.networks.map((n) => [n.id, n]));
  const out: DesiredNetwork[] = [];
  const seen = new Set<string>();
  for (const [nid, eps] of view.endpoints) {
    const handoff = [...eps.values()]
      .filter((e) => e.node === node && (e as DockerEndpointRecord).handoff && !e.netns)
      .sort(byAge) as DockerEndpointRecord[];
    if (handoff.length === 0) continue;
    const net = view.networks.get(nid);
    if (!net) continue;
    const endpoints: DesiredEndpoint[] = handoff.map((e) => ({ id: e.id, address: e.address, mac: e.mac, handoff: { hostIfname: e.handoff! } }));
    const existing = byId.get(nid);
    if (existing) {
      out.push({ ...existing, endpoints: [...existing.endpoints, ...endpoints] });
    } else {
      const peers: DesiredPeer[] = [];
      for (const e of [...eps.values()].sort(byAge)) {
        if (e.node === node) continue;
        const vtep = view.nodes.get(e.node)?.advertise ?? e.vtep;
        if (vtep) peers.push({ ip: e.ip, mac: e.mac, vtep });
      }
      out.push({ id: nid, vni: net.vni, internal: net.internal, subnets: [{ cidr: net.subnet, gateway: net.gateway }], endpoints, peers });
    }
    seen.add(nid);
  }
  for (const n of state.networks) if (!seen.has(n.id)) out.push(n);
  out.sort((a, b) => a.id.localeCompare(b.id));
  return { networks: out };
}
