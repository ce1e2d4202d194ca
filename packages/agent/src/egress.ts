/**
 * Pure: which local endpoints get an interface on the gateway bridge, and with which address. Like
 * Docker, a sandbox gets at most one egress interface (its default route): the one of its oldest
 * endpoint on a non-internal network, or the one it already has. Addresses are host-local (the
 * bridge exists per host), kept across restarts in the state file, new ones the lowest free.
 */

import { cidrContains, lowestFreeAddress, parseCidr } from './ipv4.ts';
import type { EndpointRecord, NetworkRecord } from './layout.ts';

export interface EgressAssignment {
  /** eid → `ip/len` on the gateway bridge. */
  readonly egress: Map<string, string>;
  /** Endpoints that should have had egress but the bridge subnet is full. */
  readonly unassigned: string[];
}

/** Oldest first, then by id: the order in which endpoints win conflicts. */
export function byAge(a: EndpointRecord, b: EndpointRecord): number {
  return a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id.localeCompare(b.id);
}

export function assignEgress(
  local: readonly EndpointRecord[],
  networks: ReadonlyMap<string, NetworkRecord>,
  bridge: { readonly subnet: string; readonly gateway: string },
  previous: ReadonlyMap<string, string>,
): EgressAssignment {
  const candidates = local.filter((e) => e.netns && networks.get(e.network) && !networks.get(e.network)!.internal).sort(byAge);
  const bySandbox = new Map<string, EndpointRecord[]>();
  for (const e of candidates) {
    const list = bySandbox.get(e.netns!) ?? [];
    list.push(e);
    bySandbox.set(e.netns!, list);
  }
  const chosen: EndpointRecord[] = [];
  for (const list of bySandbox.values()) chosen.push(list.find((e) => previous.has(e.id)) ?? list[0]!);
  const egress = new Map<string, string>();
  const used = new Set<string>();
  const subnet = parseCidr(bridge.subnet);
  const fits = (addr: string): boolean => {
    const c = parseCidr(addr);
    return !!c && !!subnet && c.prefixLength === subnet.prefixLength && cidrContains(subnet, c.address) && addr.split('/')[0] !== bridge.gateway;
  };
  for (const e of chosen) {
    const addr = previous.get(e.id);
    const ip = addr?.split('/')[0];
    if (addr && ip && !used.has(ip) && fits(addr)) {
      egress.set(e.id, addr);
      used.add(ip);
    }
  }
  const unassigned: string[] = [];
  for (const e of chosen) {
    if (egress.has(e.id)) continue;
    const addr = lowestFreeAddress(bridge.subnet, bridge.gateway, used);
    if (!addr) {
      unassigned.push(e.id);
      continue;
    }
    egress.set(e.id, addr);
    used.add(addr.split('/')[0]!);
  }
  return { egress, unassigned };
}

/**
 * The interface name a new endpoint gets in a sandbox when none is asked for: eth0, then the next
 * free ethN, skipping `reserved` (the egress interface's name when there is a gateway bridge).
 */
export function defaultIfname(taken: ReadonlySet<string>, reserved: string | undefined): string {
  for (let i = 0; ; i++) {
    const name = `eth${i}`;
    if (!taken.has(name) && name !== reserved) return name;
  }
}
