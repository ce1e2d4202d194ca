/**
 * Remote peers → neighbour and FDB lines for one overlay namespace. Pure.
 *
 * Every peer address is one permanent neighbour entry (`ip neigh replace IP lladdr MAC dev vxlan0 nud
 * permanent`; IPv4 and IPv6 alike), answered by the VXLAN device's proxy: ARP requests for IPv4, and —
 * checked on kernel 6.18 — IPv6 neighbour solicitations too (without the entry a container's NDP for a
 * remote address stays INCOMPLETE; with it, the container learns the MAC and `ping -6` crosses hosts, no
 * multicast needed). Every peer is one permanent FDB entry of the VXLAN device itself
 * (`bridge fdb replace MAC dev vxlan0 dst VTEP self permanent`). Only `replace` and `del` are used, so a
 * line is correct whatever the kernel held before it (a learned or stale entry is overwritten, never
 * "already exists"), and only the entries that differ are touched: a moved peer is one replace per table,
 * a removed peer one delete per table, an unchanged peer nothing.
 */

import type { ActualFdbEntry, ActualNeighbour, PlanOp } from './dataplane.ts';
import type { DataplaneObject } from './errors.ts';
import type { ResolvedPeer } from './desired-state.ts';
import { VXLAN_IFNAME } from './names.ts';

export interface PeerOps {
  /** `ip -batch` lines. */
  readonly neighbour: PlanOp[];
  /** `bridge -batch` lines. */
  readonly fdb: PlanOp[];
}

/** Failure key of the network's VXLAN device: peer lines need it. */
export function vxlanKey(networkId: string): string {
  return `vxlan:${networkId}`;
}

function peerKey(networkId: string, peer: string): string {
  return `peer:${networkId}:${peer}`;
}

/**
 * The lines that turn `actualNeighbours`/`actualFdb` (as read from vxlan0) into `peers`. Pass empty
 * actual lists when vxlan0 is about to be (re)created.
 */
export function planPeers(
  networkId: string,
  peers: readonly ResolvedPeer[],
  actualNeighbours: readonly ActualNeighbour[],
  actualFdb: readonly ActualFdbEntry[],
): PeerOps {
  const requires = [vxlanKey(networkId)];
  const object = (peer: string): DataplaneObject => ({ kind: 'peer', network: networkId, peer, ifname: VXLAN_IFNAME });
  const neighbour: PlanOp[] = [];
  const fdb: PlanOp[] = [];

  const wantNeighbour = new Map<string, string>();
  const wantFdb = new Map<string, ResolvedPeer>();
  for (const p of peers) {
    for (const ip of p.ips) wantNeighbour.set(ip, p.mac);
    wantFdb.set(p.mac, p);
  }

  const haveNeighbour = new Map<string, ActualNeighbour>();
  for (const n of actualNeighbours) {
    if (!wantNeighbour.has(n.ip)) {
      neighbour.push({
        line: `neigh del ${n.ip} dev ${VXLAN_IFNAME}`,
        object: object(n.ip),
        action: `remove neighbour entry ${n.ip} → ${n.mac}`,
        key: peerKey(networkId, n.ip),
        requires,
      });
    } else haveNeighbour.set(n.ip, n);
  }
  for (const p of peers) {
    for (const ip of p.ips) {
      const have = haveNeighbour.get(ip);
      if (have && have.mac === p.mac && have.permanent) continue;
      neighbour.push({
        line: `neigh replace ${ip} lladdr ${p.mac} dev ${VXLAN_IFNAME} nud permanent`,
        object: object(p.label),
        action: `set neighbour entry ${ip} → ${p.mac}`,
        key: peerKey(networkId, p.label),
        requires,
      });
    }
  }

  const haveFdb = new Map<string, string[]>();
  for (const e of actualFdb) {
    const dsts = haveFdb.get(e.mac);
    if (dsts) dsts.push(e.dst);
    else haveFdb.set(e.mac, [e.dst]);
  }
  for (const [mac, dsts] of haveFdb) {
    const want = wantFdb.get(mac);
    // Several remotes for one MAC (an appended entry) cannot be narrowed by replace: delete it whole first.
    if (!want || dsts.length > 1) {
      const who = want?.label ?? mac;
      fdb.push({
        line: `fdb del ${mac} dev ${VXLAN_IFNAME} self`,
        object: object(who),
        action: `remove FDB entry ${mac} → ${dsts.join(',')}`,
        key: peerKey(networkId, who),
        requires,
      });
    }
  }
  for (const p of peers) {
    const dsts = haveFdb.get(p.mac);
    if (dsts && dsts.length === 1 && dsts[0] === p.vtep) continue;
    fdb.push({
      line: `fdb replace ${p.mac} dev ${VXLAN_IFNAME} dst ${p.vtep} self permanent`,
      object: object(p.label),
      action: `set FDB entry ${p.mac} → VTEP ${p.vtep}`,
      key: peerKey(networkId, p.label),
      requires,
    });
  }
  return { neighbour, fdb };
}
