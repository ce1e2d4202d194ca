/**
 * The incremental path's planner. Pure: what the last successful full apply left on each network's
 * vxlan0 ({@link ProgrammedNetwork}, known without reading the kernel back) + a change of peers
 * ({@link PeerDelta}) → the neighbour and FDB lines of that change, and what vxlan0 then holds.
 *
 * It plans only what it can plan exactly as the full planner would: when every peer of the network is
 * valid and every address and MAC belongs to one peer, the full planner programs exactly the desired
 * peers, in any order, so a change is its own `replace`/`del` lines. Anything else — an invalid peer,
 * a duplicate address or MAC (a transient race the full planner settles by age), a clash with a local
 * endpoint or this host's own VTEP, a network without a baseline, a removed peer that is not what the
 * baseline holds — is answered with `full` and a reason, and the caller applies the full desired state
 * (which reads the kernel and reports the error the way it always did).
 */

import { canonicalIp, normalizeMac, parseIp } from '@kvnet/netaddr';
import type { ResolvedConfig } from './config.ts';
import type { DesiredPeer, NetnsTarget, Plan, PlanBatch, PlanOp, PeerDelta } from './dataplane.ts';
import type { ResolvedNetwork } from './desired-state.ts';
import type { DataplaneObject } from './errors.ts';
import { vxlanKey } from './fdb-plan.ts';
import { VXLAN_IFNAME } from './names.ts';

/** What one network's vxlan0 holds after the last apply, and what a peer must not collide with. */
export interface ProgrammedNetwork {
  /** Overlay namespace name. */
  readonly netns: string;
  /** Permanent neighbour entries: canonical IP → MAC. */
  readonly neighbours: Map<string, string>;
  /** FDB entries of vxlan0 itself: MAC → VTEP (canonical). */
  readonly fdb: Map<string, string>;
  /** Addresses and MACs of the network's local endpoints. */
  readonly localIps: ReadonlySet<string>;
  readonly localMacs: ReadonlySet<string>;
}

/** The baseline of a network as the full planner resolved it (valid, first-wins peers). */
export function programmedNetworkOf(net: ResolvedNetwork): ProgrammedNetwork {
  const neighbours = new Map<string, string>();
  const fdb = new Map<string, string>();
  for (const p of net.peers) {
    for (const ip of p.ips) neighbours.set(ip, p.mac);
    fdb.set(p.mac, p.vtep);
  }
  return {
    netns: net.netns,
    neighbours,
    fdb,
    localIps: new Set(net.endpoints.flatMap((e) => e.addresses.map((a) => a.slice(0, a.indexOf('/'))))),
    localMacs: new Set(net.endpoints.map((e) => e.mac)),
  };
}

/** A planned change: the plan, and the entries it sets (a value) or removes (undefined), per network. */
export interface PeerDeltaPlan {
  readonly plan: Plan;
  readonly neighbours: ReadonlyMap<string, ReadonlyMap<string, string | undefined>>;
  readonly fdb: ReadonlyMap<string, ReadonlyMap<string, string | undefined>>;
}

interface OnePeer {
  readonly ips: readonly string[];
  readonly mac: string;
  readonly vtep: string;
  readonly label: string;
}

/** The full planner's validation of one peer; a reason instead when it would refuse it. */
function resolvePeer(p: DesiredPeer, config: ResolvedConfig): OnePeer | string {
  const ips: string[] = [];
  if (p.ip !== undefined) {
    const ip = canonicalIp(p.ip);
    if (ip === undefined || ip.includes(':')) return `peer ip ${p.ip} is not an IPv4 address`;
    ips.push(ip);
  }
  if (p.ipv6 !== undefined) {
    const ip = canonicalIp(p.ipv6);
    if (ip === undefined || !ip.includes(':')) return `peer ipv6 ${p.ipv6} is not an IPv6 address`;
    ips.push(ip);
  }
  if (ips.length === 0) return 'a peer has no address';
  const mac = normalizeMac(p.mac);
  if (!mac) return `peer MAC ${p.mac} is not a unicast MAC address`;
  const v = parseIp(p.vtep);
  if (!v || v.family !== config.vtepFamily) return `peer VTEP ${p.vtep} is not an IPv${config.vtepFamily} address`;
  const vtep = canonicalIp(p.vtep)!;
  return { ips, mac, vtep, label: ips[0]! };
}

/**
 * The lines that apply `deltas` to `programmed` (removals first, then additions, per network), or a
 * reason the change needs the full path. Several deltas of one network are applied in order.
 */
export function planPeerDelta(deltas: readonly PeerDelta[], programmed: ReadonlyMap<string, ProgrammedNetwork>, config: ResolvedConfig): PeerDeltaPlan | { readonly full: string } {
  const neighbourChanges = new Map<string, Map<string, string | undefined>>();
  const fdbChanges = new Map<string, Map<string, string | undefined>>();
  const labels = new Map<string, string>();
  for (const d of deltas) {
    const net = programmed.get(d.network);
    if (!net) return { full: `network ${d.network} has no baseline (it is not programmed here)` };
    let nc = neighbourChanges.get(d.network);
    if (!nc) neighbourChanges.set(d.network, (nc = new Map()));
    let fc = fdbChanges.get(d.network);
    if (!fc) fdbChanges.set(d.network, (fc = new Map()));
    const neighbour = (ip: string): string | undefined => (nc!.has(ip) ? nc!.get(ip) : net.neighbours.get(ip));
    const fdb = (mac: string): string | undefined => (fc!.has(mac) ? fc!.get(mac) : net.fdb.get(mac));
    for (const p of d.remove) {
      const r = resolvePeer(p, config);
      if (typeof r === 'string') return { full: r };
      for (const ip of r.ips) {
        if (neighbour(ip) !== r.mac) return { full: `removed peer ${r.label} is not programmed as ${ip} → ${r.mac}` };
        nc.set(ip, undefined);
      }
      if (fdb(r.mac) !== r.vtep) return { full: `removed peer ${r.label} is not programmed as ${r.mac} → ${r.vtep}` };
      fc.set(r.mac, undefined);
    }
    for (const p of d.add) {
      const r = resolvePeer(p, config);
      if (typeof r === 'string') return { full: r };
      if (r.vtep === config.vtep) return { full: `peer ${r.label} has this host's own VTEP ${r.vtep}` };
      for (const ip of r.ips) {
        if (neighbour(ip) !== undefined) return { full: `peer address ${ip} is already programmed (a duplicate)` };
        if (net.localIps.has(ip)) return { full: `peer address ${ip} is a local endpoint's` };
        nc.set(ip, r.mac);
        labels.set(`${d.network}|${ip}`, r.label);
      }
      if (fdb(r.mac) !== undefined) return { full: `peer MAC ${r.mac} is already programmed (a duplicate)` };
      if (net.localMacs.has(r.mac)) return { full: `peer MAC ${r.mac} is a local endpoint's` };
      fc.set(r.mac, r.vtep);
      labels.set(`${d.network}|${r.mac}`, r.label);
    }
  }

  const batches: PlanBatch[] = [];
  let changes = 0;
  for (const [nid, nc] of neighbourChanges) {
    const net = programmed.get(nid)!;
    const ov: NetnsTarget = { kind: 'name', name: net.netns };
    const requires = [vxlanKey(nid)];
    const object = (peer: string): DataplaneObject => ({ kind: 'peer', network: nid, peer, ifname: VXLAN_IFNAME });
    const neighbourOps: PlanOp[] = [];
    for (const [ip, mac] of nc) {
      const before = net.neighbours.get(ip);
      if (mac === before) continue;
      const label = labels.get(`${nid}|${ip}`) ?? ip;
      neighbourOps.push(
        mac === undefined
          ? { line: `neigh del ${ip} dev ${VXLAN_IFNAME}`, object: object(ip), action: `remove neighbour entry ${ip} → ${before}`, key: `peer:${nid}:${ip}`, requires }
          : { line: `neigh replace ${ip} lladdr ${mac} dev ${VXLAN_IFNAME} nud permanent`, object: object(label), action: `set neighbour entry ${ip} → ${mac}`, key: `peer:${nid}:${label}`, requires },
      );
    }
    const fdbOps: PlanOp[] = [];
    for (const [mac, vtep] of fdbChanges.get(nid)!) {
      const before = net.fdb.get(mac);
      if (vtep === before) continue;
      const label = labels.get(`${nid}|${mac}`) ?? mac;
      fdbOps.push(
        vtep === undefined
          ? { line: `fdb del ${mac} dev ${VXLAN_IFNAME} self`, object: object(label), action: `remove FDB entry ${mac} → ${before}`, key: `peer:${nid}:${label}`, requires }
          : { line: `fdb replace ${mac} dev ${VXLAN_IFNAME} dst ${vtep} self permanent`, object: object(label), action: `set FDB entry ${mac} → VTEP ${vtep}`, key: `peer:${nid}:${label}`, requires },
      );
    }
    if (neighbourOps.length > 0) batches.push({ tool: 'ip', netns: ov, ops: neighbourOps });
    if (fdbOps.length > 0) batches.push({ tool: 'bridge', netns: ov, ops: fdbOps });
    changes += neighbourOps.length + fdbOps.length;
  }
  return {
    plan: { stages: batches.length > 0 ? [{ name: 'configure', batches }] : [], errors: [], warnings: [], changes },
    neighbours: neighbourChanges,
    fdb: fdbChanges,
  };
}

/** Records a planned change in the baseline once the kernel has taken it. */
export function commitPeerDelta(programmed: ReadonlyMap<string, ProgrammedNetwork>, planned: PeerDeltaPlan): void {
  for (const [nid, changes] of planned.neighbours) {
    const net = programmed.get(nid)!;
    for (const [ip, mac] of changes) {
      if (mac === undefined) net.neighbours.delete(ip);
      else net.neighbours.set(ip, mac);
    }
  }
  for (const [nid, changes] of planned.fdb) {
    const net = programmed.get(nid)!;
    for (const [mac, vtep] of changes) {
      if (vtep === undefined) net.fdb.delete(mac);
      else net.fdb.set(mac, vtep);
    }
  }
}
