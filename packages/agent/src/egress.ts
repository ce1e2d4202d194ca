/**
 * Pure: which local endpoints get an interface on the gateway bridge, and with which address. Like
 * Docker, a sandbox gets at most one egress interface (its default route): the one of its oldest
 * endpoint on a non-internal network, or the one it already has. Addresses are host-local (the
 * bridge exists per host), kept across restarts in the state file, new ones the lowest free.
 */

import { formatIp, parseInterfaceAddress } from '@kvnet/netaddr';
import { cidrContains, lowestFreeAddress, parseCidr } from './ipv4.ts';
import { endpointAddresses, type EndpointRecord, type NetworkRecord } from './layout.ts';

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
 * The IPv6 address on the gateway bridge paired with an egress IPv4 address: the same host number in
 * the bridge's IPv6 /64 (172.18.0.5/16 → fd6b:766e:6777::5/64). Unique because the IPv4 ones are, and
 * stable across restarts without being stored. Undefined when the bridge has no IPv6 subnet or the
 * pairing would hit the bridge's own IPv6 address.
 */
export function egressIpv6For(ipv4: string, bridge: { readonly subnet: string; readonly subnet6?: string; readonly gateway6?: string }): string | undefined {
  const v4 = parseInterfaceAddress(ipv4);
  const net4 = parseInterfaceAddress(bridge.subnet);
  const net6 = bridge.subnet6 ? parseInterfaceAddress(bridge.subnet6) : undefined;
  if (!v4 || !net4 || !net6 || v4.ip.family !== 4 || net6.network.family !== 6) return undefined;
  const ip = formatIp(6, net6.network.base + (v4.ip.value - net4.network.base));
  return ip === bridge.gateway6 ? undefined : `${ip}/${net6.network.prefix}`;
}

/**
 * IPv6 egress addresses (eid → `ip/len`) for the endpoints that have IPv4 egress (`egress`) and whose
 * sandbox has an IPv6 address on some non-internal network: a container of IPv4-only networks keeps an
 * IPv4-only way out, as Docker's docker_gwbridge gives it.
 */
export function assignEgress6(
  egress: ReadonlyMap<string, string>,
  local: readonly EndpointRecord[],
  networks: ReadonlyMap<string, NetworkRecord>,
  bridge: { readonly subnet: string; readonly subnet6?: string; readonly gateway6?: string },
): Map<string, string> {
  const out = new Map<string, string>();
  if (!bridge.subnet6) return out;
  const wantsIpv6 = new Set(local.filter((e) => e.netns && networks.get(e.network)?.internal === false && endpointAddresses(e).v6).map((e) => e.netns!));
  for (const e of local) {
    const v4 = egress.get(e.id);
    if (!v4 || !e.netns || !wantsIpv6.has(e.netns)) continue;
    const v6 = egressIpv6For(v4, bridge);
    if (v6) out.set(e.id, v6);
  }
  return out;
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
