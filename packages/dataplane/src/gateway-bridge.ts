/**
 * The gateway bridge (Docker's docker_gwbridge): a bridge in the host namespace giving non-internal
 * containers a way out. Each container gets a second interface on it carrying its default route(s).
 *
 * - IPv4 subnet: the first block, from the configured pool upward to the end of the private range the
 *   pool lies in (172.18.0.0/16 … 172.31.0.0/16 by default), that overlaps no IPv4 route of the host.
 * - IPv6 (when the host has IPv6, see {@link GatewayBridgeConfig.ipv6}): the first /64 from the IPv6
 *   pool (a ULA, fd6b:766e:6777::/64 by default) to the end of its /48 that overlaps no IPv6 route of the
 *   host, set without duplicate address detection; masqueraded by ip6tables like IPv4, so containers use
 *   the host's own IPv6 address outside and the outside needs no route to the ULA.
 * - An existing bridge keeps the subnets it has (restarts never renumber it).
 * - ICC off: every port is isolated (`bridge_slave isolated on`: no frames between isolated ports, so
 *   it holds with or without br_netfilter), and routed traffic from the bridge back into it is dropped.
 * - Egress: MASQUERADE for the subnet leaving through any other interface; forwarding accepted out and
 *   for replies (the FORWARD policy may be DROP, as dockerd sets it); net.ipv4.ip_forward=1, and
 *   net.ipv6.conf.all.forwarding=1 with IPv6 (see enableIpv6Forwarding for router advertisements).
 * - iptables/ip6tables rules live in two chains named after the prefix, jumped to from FORWARD and
 *   POSTROUTING, rewritten whole (iptables-restore --noflush) only when they differ.
 */

import type { Logger } from 'pino';
import {
  cidrLast,
  cidrOf,
  cidrOverlaps,
  familyBits,
  formatCidr,
  formatIp,
  parseInterfaceAddress,
  type Cidr,
} from '@kvnet/netaddr';
import type { ResolvedConfig } from './config.ts';
import type { ActualLink, GatewayBridgeInfo } from './dataplane.ts';
import { CommandFailedError, GatewayPoolExhaustedError, KernelRefusedError, type DataplaneObject } from './errors.ts';
import { enableIpv6Forwarding, writeSysctl } from './host-tuning.ts';
import { desiredIptablesRules, iptablesRestore, iptablesRestoreInput, readIptables, type IptablesFamily } from './iptables.ts';
import { readJson, runBatch } from './iproute2.ts';
import { gatewayBridgeMarker } from './names.ts';
import { gatewayBridgeOf, parseLinks } from './kernel-state.ts';

const PRIVATE_RANGES_V4 = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'].map((c) => cidrOf(c)!);
/** An IPv6 pool is searched up to the end of the /48 it lies in (one ULA site prefix). */
const IPV6_SEARCH_PREFIX = 48;

/** The range the candidates of `first` may come from (undefined: only `first` itself). */
function searchRange(first: Cidr): Cidr | undefined {
  if (first.family === 4) return PRIVATE_RANGES_V4.find((r) => r.prefix <= first.prefix && cidrOverlaps(r, first));
  if (first.prefix < IPV6_SEARCH_PREFIX) return undefined;
  const shift = BigInt(familyBits(6) - IPV6_SEARCH_PREFIX);
  return { family: 6, base: (first.base >> shift) << shift, prefix: IPV6_SEARCH_PREFIX };
}

/**
 * The first block of the pool's size, from the pool upward, that overlaps none of `routes` (CIDRs or
 * bare addresses of the pool's family). Candidates stop at the end of the RFC 1918 range holding an
 * IPv4 pool, or of the /48 holding an IPv6 pool; a pool outside them is the only candidate. A route
 * wider than the pool is skipped at once, not block by block.
 */
export function chooseGatewaySubnet(pool: string, routes: readonly string[]): { subnet: string; gateway: string; tried: number } | { tried: number } {
  const first = cidrOf(pool);
  if (!first) return { tried: 0 };
  const range = searchRange(first);
  const taken = routes
    .map((r) => parseInterfaceAddress(r.includes('/') ? r : `${r}/${familyBits(first.family)}`)?.network)
    .filter((c): c is Cidr => c !== undefined && c.family === first.family);
  const step = 1n << BigInt(familyBits(first.family) - first.prefix);
  let tried = 0;
  for (let c: Cidr | undefined = first; c; ) {
    if (tried > 0 && (!range || !cidrOverlaps(range, c))) break;
    const clash = taken.find((t) => cidrOverlaps(t, c!));
    if (!clash) return { subnet: formatCidr(c), gateway: formatIp(c.family, c.base + 1n), tried: tried + 1 };
    const next = blockAfter(c, clash);
    // every candidate block the clash covers counts as tried (inside the search range)
    const limit = range ? cidrLast(range) + 1n : c.base + step;
    const upTo = next && next.base < limit ? next.base : limit;
    tried += Math.max(1, Number((upTo - c.base) / step));
    c = next;
  }
  return { tried };
}

/**
 * The first block of `c`'s size after both `c` and the route `clash` overlapping it (overlapping
 * networks nest, so the end of the wider one is followed by an aligned block); undefined past the end.
 */
function blockAfter(c: Cidr, clash: Cidr): Cidr | undefined {
  const wider = clash.prefix < c.prefix ? clash : c;
  const next = cidrLast(wider) + 1n;
  return next >> BigInt(familyBits(c.family)) === 0n ? { family: c.family, base: next, prefix: c.prefix } : undefined;
}

/** `ip -json route show table all` → destination CIDRs (or bare addresses), without default routes. */
export function parseRouteDestinations(json: unknown): string[] {
  if (!Array.isArray(json)) return [];
  return json
    .map((r) => (r as { dst?: unknown }).dst)
    .filter((d): d is string => typeof d === 'string' && d !== 'default' && parseInterfaceAddress(d.includes('/') ? d : `${d}/${d.includes(':') ? 128 : 32}`) !== undefined);
}

/** True when some interface of the host other than `bridge` and `lo` has an IPv6 address (link-local ones are not read). */
export function hostHasIpv6(links: readonly ActualLink[], bridge: string): boolean {
  return links.some((l) => l.name !== bridge && l.name !== 'lo' && l.addresses.some((a) => a.includes(':')));
}

async function applyRules(config: ResolvedConfig, family: IptablesFamily, bridge: string, subnet: string, object: DataplaneObject, logger: Logger): Promise<void> {
  const want = desiredIptablesRules(config.prefix, bridge, subnet);
  const have = await readIptables(config, undefined, family);
  for (const table of ['filter', 'nat'] as const) {
    const input = iptablesRestoreInput(table, want[table], have[table]);
    if (input) {
      await iptablesRestore(config, input, object, family);
      logger.info({ table, bridge, family }, `wrote gateway bridge ${family === 6 ? 'ip6tables' : 'iptables'} rules`);
    }
  }
}

/** Creates or repairs the gateway bridge, its sysctls and iptables rules; returns its subnets. Throws on failure. */
export async function ensureGatewayBridge(config: ResolvedConfig, logger: Logger): Promise<GatewayBridgeInfo> {
  const gw = config.gateway!;
  const object: DataplaneObject = { kind: 'gateway-bridge', ifname: gw.name, netns: config.hostLabel };
  const links = parseLinks(await readJson('ip', config.host, ['-d', 'addr', 'show']));
  const bridge = gatewayBridgeOf(links, gw.name, config.prefix);
  const lines: string[] = [];
  if (links.some((l) => l.name === gw.name) && !bridge) {
    throw new KernelRefusedError(object, `use ${gw.name} as gateway bridge`, config.hostLabel, 'an interface with that name exists and is not a bridge', '');
  }
  if (!bridge) {
    lines.push(`link add name ${gw.name} mtu ${config.underlayMtu} type bridge`, `link set dev ${gw.name} alias ${gatewayBridgeMarker(config.prefix)}`);
  }
  let subnet = bridge?.subnet;
  let gateway = bridge?.gateway;
  if (!subnet || !gateway) {
    const routes = parseRouteDestinations(await readJson('ip', config.host, ['-4', 'route', 'show', 'table', 'all']));
    const choice = chooseGatewaySubnet(gw.pool, routes);
    if (!('subnet' in choice)) throw new GatewayPoolExhaustedError(object, gw.pool, choice.tried);
    subnet = choice.subnet;
    gateway = choice.gateway;
    lines.push(`addr add ${gateway}/${subnet.split('/')[1]} dev ${gw.name}`);
  }
  const withV6 = gw.ipv6 === 'on' || (gw.ipv6 === 'auto' && hostHasIpv6(links, gw.name));
  let subnet6 = withV6 ? bridge?.subnet6 : undefined;
  let gateway6 = withV6 ? bridge?.gateway6 : undefined;
  if (withV6 && (!subnet6 || !gateway6)) {
    const routes = parseRouteDestinations(await readJson('ip', config.host, ['-6', 'route', 'show', 'table', 'all']));
    const pool6 = formatCidr(gw.pool6);
    const choice = chooseGatewaySubnet(pool6, routes);
    if (!('subnet' in choice)) throw new GatewayPoolExhaustedError(object, pool6, choice.tried);
    subnet6 = choice.subnet;
    gateway6 = choice.gateway;
    lines.push(`addr add ${gateway6}/${subnet6.split('/')[1]} dev ${gw.name} nodad`);
  }
  if (!bridge?.up) lines.push(`link set dev ${gw.name} up`);
  if (lines.length > 0) {
    const result = await runBatch('ip', config.host, lines);
    const failure = result.fatal ?? [...result.failures.values()][0];
    if (failure) throw new KernelRefusedError(object, `set up gateway bridge ${gw.name} (${[subnet, subnet6].filter(Boolean).join(', ')})`, config.hostLabel, failure, lines.join('; '));
    logger.info({ bridge: gw.name, subnet, gateway, subnet6, gateway6 }, bridge ? 'repaired gateway bridge' : 'created gateway bridge');
  }
  try {
    await writeSysctl(config, 'net.ipv4.ip_forward', 1);
    if (subnet6) await enableIpv6Forwarding(config, logger);
  } catch (err) {
    throw new CommandFailedError(object, subnet6 ? 'sysctl (IPv4 and IPv6 forwarding)' : 'sysctl -w net.ipv4.ip_forward=1', (err as Error).message, { cause: err });
  }
  await applyRules(config, 4, gw.name, subnet, object, logger);
  if (subnet6) await applyRules(config, 6, gw.name, subnet6, object, logger);
  return { name: gw.name, subnet, gateway, ...(subnet6 && gateway6 ? { subnet6, gateway6 } : {}) };
}
