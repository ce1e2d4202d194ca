/**
 * The gateway bridge (Docker's docker_gwbridge): a bridge in the host namespace giving non-internal
 * containers a way out. Each container gets a second interface on it carrying its default route.
 *
 * - Subnet: the first block, from the configured pool upward to the end of the private range the pool
 *   lies in (172.18.0.0/16 … 172.31.0.0/16 by default), that overlaps no IPv4 route of the host. An
 *   existing bridge keeps the subnet it has (restarts never renumber it).
 * - ICC off: every port is isolated (`bridge_slave isolated on`: no frames between isolated ports, so
 *   it holds with or without br_netfilter), and routed traffic from the bridge back into it is dropped.
 * - Egress: MASQUERADE for the subnet leaving through any other interface; forwarding accepted out and
 *   for replies (the FORWARD policy may be DROP, as dockerd sets it); net.ipv4.ip_forward=1.
 * - iptables rules live in two chains named after the prefix, jumped to from FORWARD and POSTROUTING,
 *   rewritten whole (iptables-restore --noflush) only when they differ: idempotent and removable.
 */

import type { Logger } from 'pino';
import type { ResolvedConfig } from './config.ts';
import type { GatewayBridgeInfo } from './dataplane.ts';
import { CommandFailedError, GatewayPoolExhaustedError, KernelRefusedError, type DataplaneObject } from './errors.ts';
import { desiredIptablesRules, iptablesRestore, iptablesRestoreInput, readIptables } from './iptables.ts';
import { cidrsOverlap, formatIpv4, formatNetwork, nextBlock, parseCidr, parseIpv4, type Ipv4Cidr } from './ipv4.ts';
import { readJson, runBatch } from './iproute2.ts';
import { gatewayBridgeMarker } from './names.ts';
import { gatewayBridgeOf, parseLinks } from './kernel-state.ts';
import { writeSysctl } from './host-tuning.ts';

const PRIVATE_RANGES = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'].map((c) => parseCidr(c)!);

/**
 * The first block of the pool's size, from the pool upward, that overlaps none of `routes`. Candidates
 * stop at the end of the RFC 1918 range holding the pool; a pool outside them is the only candidate.
 */
export function chooseGatewaySubnet(pool: string, routes: readonly string[]): { subnet: string; gateway: string; tried: number } | { tried: number } {
  const first = parseCidr(pool);
  if (!first) return { tried: 0 };
  const range = PRIVATE_RANGES.find((r) => r.prefixLength <= first.prefixLength && cidrsOverlap(r, first));
  const taken = routes.map((r) => parseCidr(r.includes('/') ? r : `${r}/32`)).filter((c): c is Ipv4Cidr => c !== undefined);
  let tried = 0;
  for (let c: Ipv4Cidr | undefined = first; c; c = nextBlock(c)) {
    if (tried > 0 && (!range || !cidrsOverlap(range, c))) break;
    tried++;
    if (!taken.some((t) => cidrsOverlap(t, c!))) {
      return { subnet: formatNetwork(c), gateway: formatIpv4(c.network + 1), tried };
    }
  }
  return { tried };
}

/** `ip -json route show table all` → destination CIDRs, without default routes. */
export function parseRouteDestinations(json: unknown): string[] {
  if (!Array.isArray(json)) return [];
  return json
    .map((r) => (r as { dst?: unknown }).dst)
    .filter((d): d is string => typeof d === 'string' && d !== 'default' && parseIpv4(d.split('/')[0]!) !== undefined);
}

/** Creates or repairs the gateway bridge, its sysctls and iptables rules; returns its subnet. Throws on failure. */
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
  if (!bridge?.up) lines.push(`link set dev ${gw.name} up`);
  if (lines.length > 0) {
    const result = await runBatch('ip', config.host, lines);
    const failure = result.fatal ?? [...result.failures.values()][0];
    if (failure) throw new KernelRefusedError(object, `set up gateway bridge ${gw.name} (${subnet})`, config.hostLabel, failure, lines.join('; '));
    logger.info({ bridge: gw.name, subnet, gateway }, bridge ? 'repaired gateway bridge' : 'created gateway bridge');
  }
  try {
    await writeSysctl(config, 'net.ipv4.ip_forward', 1);
  } catch (err) {
    throw new CommandFailedError(object, 'sysctl -w net.ipv4.ip_forward=1', (err as Error).message, { cause: err });
  }
  const want = desiredIptablesRules(config.prefix, gw.name, subnet);
  const have = await readIptables(config);
  for (const table of ['filter', 'nat'] as const) {
    const input = iptablesRestoreInput(table, want[table], have[table]);
    if (input) {
      await iptablesRestore(config, input, object);
      logger.info({ table, bridge: gw.name }, 'wrote gateway bridge iptables rules');
    }
  }
  return { name: gw.name, subnet, gateway };
}
