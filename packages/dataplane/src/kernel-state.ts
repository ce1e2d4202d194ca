/**
 * Reading back what this prefix owns in the kernel, as data ({@link ActualState}). Parsers are pure and
 * take iproute2's `-json` output; readers run two processes per overlay namespace (`ip -d -json -batch`
 * for links+addresses+neighbours, `bridge -json fdb show`) and one for the host namespace.
 */

import { readdir } from 'node:fs/promises';
import { canonicalIp, cidrContainsIp, cidrOf, formatCidr, ipToString, parseInterfaceAddress, parseIp, type Cidr } from '@kvnet/netaddr';
import type { ResolvedConfig } from './config.ts';
import type {
  ActualFdbEntry,
  ActualGatewayBridge,
  ActualHost,
  ActualLink,
  ActualNeighbour,
  ActualNetwork,
  ActualState,
  DesiredState,
  SandboxProbe,
} from './dataplane.ts';
import { CommandFailedError } from './errors.ts';
import { readIptables } from './iptables.ts';
import { mapConcurrent } from './concurrency.ts';
import { readJson, readJsonBatch } from './iproute2.ts';
import { probeNetnsAsync } from './netns-file.ts';
import { gatewayBridgeMarker, isEgressHostIfname, networkIdOfNetns, VXLAN_IFNAME } from './names.ts';

/** Where `ip netns add` puts namespace files. */
export const NETNS_RUN_DIR = '/run/netns';
/** Overlay namespaces read at the same time. */
export const READ_CONCURRENCY = 4;
/** IPv6 link-local addresses (fe80::/10): made by the kernel on every interface, never managed here. */
const LINK_LOCAL_V6: Cidr = cidrOf('fe80::/10')!;

type Json = Record<string, unknown>;

function asArray(value: unknown): Json[] {
  return Array.isArray(value) ? (value.filter((v) => v !== null && typeof v === 'object') as Json[]) : [];
}

function isLinkLocalV6(ip: string): boolean {
  const a = parseIp(ip);
  return a !== undefined && cidrContainsIp(LINK_LOCAL_V6, a);
}

/** `ip -d -json addr show` → links with their IPv4 and (not link-local) IPv6 addresses, canonical. */
export function parseLinks(json: unknown): ActualLink[] {
  return asArray(json).map((l) => {
    const info = (l.linkinfo ?? {}) as Json;
    const data = (info.info_data ?? {}) as Json;
    const slave = (info.info_slave_data ?? {}) as Json;
    const flags = Array.isArray(l.flags) ? (l.flags as string[]) : [];
    const addresses = asArray(l.addr_info)
      .filter((a) => (a.family === 'inet' || a.family === 'inet6') && typeof a.local === 'string' && !isLinkLocalV6(a.local))
      .map((a) => `${canonicalIp(a.local as string) ?? String(a.local)}/${Number(a.prefixlen)}`);
    const kind = typeof info.info_kind === 'string' ? info.info_kind : undefined;
    const link: ActualLink = {
      name: String(l.ifname),
      index: Number(l.ifindex),
      ...(kind ? { kind } : {}),
      mtu: Number(l.mtu),
      mac: String(l.address ?? ''),
      up: flags.includes('UP'),
      ...(typeof l.master === 'string' ? { master: l.master } : {}),
      ...(typeof l.ifalias === 'string' ? { alias: l.ifalias } : {}),
      addresses,
      ...(kind === 'vxlan'
        ? {
            vxlan: {
              vni: Number(data.id),
              port: Number(data.port),
              ...(typeof data.local === 'string' ? { local: data.local } : typeof data.local6 === 'string' ? { local: canonicalIp(data.local6) ?? data.local6 } : {}),
              learning: data.learning === true,
              proxy: data.proxy === true,
            },
          }
        : {}),
      ...(info.info_slave_kind === 'bridge' ? { isolated: slave.isolated === true } : {}),
      ...(kind === 'veth' && typeof l.link_index === 'number'
        ? { peer: { index: l.link_index, ...(typeof l.link_netnsid === 'number' ? { netnsId: l.link_netnsid } : {}) } }
        : {}),
    };
    return link;
  });
}

/** `ip -json neigh show` (all devices, both families) → the entries on `dev`, without IPv6 link-local ones. */
export function parseNeighbours(json: unknown, dev: string): ActualNeighbour[] {
  const out: ActualNeighbour[] = [];
  for (const n of asArray(json)) {
    if (n.dev !== dev || typeof n.dst !== 'string') continue;
    // parsed once per entry: a read of 10 000 peers parses 10 000 addresses
    const a = parseIp(n.dst);
    if (!a || (a.family === 6 && cidrContainsIp(LINK_LOCAL_V6, a))) continue;
    out.push({ ip: ipToString(a), mac: String(n.lladdr ?? ''), permanent: Array.isArray(n.state) && (n.state as string[]).includes('PERMANENT') });
  }
  return out;
}

/** `bridge -json fdb show` (all devices) → the `self` entries of `dev` that have a remote (`dst`). */
export function parseFdb(json: unknown, dev: string): ActualFdbEntry[] {
  return asArray(json)
    .filter((e) => e.ifname === dev && typeof e.dst === 'string' && Array.isArray(e.flags) && (e.flags as string[]).includes('self'))
    .map((e) => ({ mac: String(e.mac), dst: canonicalIp(e.dst as string) ?? (e.dst as string) }));
}

export function gatewayBridgeOf(links: readonly ActualLink[], name: string, prefix: string): ActualGatewayBridge | undefined {
  const br = links.find((l) => l.name === name && l.kind === 'bridge');
  if (!br) return undefined;
  const parsed = br.addresses.map((a) => parseInterfaceAddress(a)).filter((a) => a !== undefined);
  const v4 = parsed.find((a) => a.ip.family === 4);
  const v6 = parsed.find((a) => a.ip.family === 6);
  return {
    name,
    ...(v4 ? { subnet: formatCidr(v4.network), gateway: ipToString(v4.ip) } : {}),
    ...(v6 ? { subnet6: formatCidr(v6.network), gateway6: ipToString(v6.ip) } : {}),
    up: br.up,
    mtu: br.mtu,
    owned: br.alias === gatewayBridgeMarker(prefix),
  };
}

/** The overlay namespace names of this prefix present under /run/netns. */
export async function listOverlayNamespaces(prefix: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(NETNS_RUN_DIR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.filter((n) => networkIdOfNetns(prefix, n) !== undefined).sort();
}

/**
 * One overlay namespace. `known` gives its vxlan0 neighbour and FDB entries instead of reading them
 * (they are the only part whose size grows with the cluster: one of each per remote endpoint).
 */
export async function readOverlayNetwork(
  prefix: string,
  netns: string,
  signal?: AbortSignal,
  known?: Pick<ActualNetwork, 'neighbours' | 'fdb'>,
): Promise<ActualNetwork> {
  const id = networkIdOfNetns(prefix, netns)!;
  const target = { kind: 'name', name: netns } as const;
  try {
    if (known) {
      const [links] = await readJsonBatch('ip', target, ['-d'], ['addr show'], { ...(signal ? { signal } : {}) });
      return { id, netns, links: parseLinks(links), neighbours: known.neighbours, fdb: known.fdb };
    }
    const [ipOut, fdbOut] = await Promise.all([
      readJsonBatch('ip', target, ['-d'], ['addr show', 'neigh show'], { ...(signal ? { signal } : {}) }),
      readJson('bridge', target, ['fdb', 'show'], { ...(signal ? { signal } : {}) }),
    ]);
    return {
      id,
      netns,
      links: parseLinks(ipOut[0]),
      neighbours: parseNeighbours(ipOut[1], VXLAN_IFNAME),
      fdb: parseFdb(fdbOut, VXLAN_IFNAME),
    };
  } catch (err) {
    signal?.throwIfAborted();
    return { id, netns, readError: (err as Error).message, links: [], neighbours: [], fdb: [] };
  }
}

export async function readHost(config: ResolvedConfig, options: { iptables: boolean; signal?: AbortSignal }): Promise<ActualHost> {
  const signalOpt = options.signal ? { signal: options.signal } : {};
  const all = parseLinks(await readJson('ip', config.host, ['-d', 'addr', 'show'], signalOpt));
  const links = all.filter((l) => isEgressHostIfname(config.prefix, l.name));
  const gatewayBridge = config.gateway ? gatewayBridgeOf(all, config.gateway.name, config.prefix) : undefined;
  // ip6tables is read whenever iptables is (chains of an earlier run with IPv6 egress are found and
  // removed), but a host without ip6tables only fails the read where IPv6 egress is asked for.
  const ipv6Wanted = config.gateway !== undefined && config.gateway.ipv6 !== 'off';
  const [iptables, ip6tables] = await Promise.all([
    options.iptables ? readIptables(config, options.signal, 4) : undefined,
    options.iptables
      ? readIptables(config, options.signal, 6).catch((err: unknown) => {
          if (ipv6Wanted || !(err instanceof CommandFailedError)) throw err;
          return undefined;
        })
      : undefined,
  ]);
  return {
    netns: config.hostLabel,
    links,
    ...(gatewayBridge ? { gatewayBridge } : {}),
    ...(iptables ? { iptables } : {}),
    ...(ip6tables ? { ip6tables } : {}),
  };
}

/**
 * Everything this prefix owns: overlay namespaces (read concurrently) and the host's parts. `known`:
 * per network id, vxlan0's entries as the caller knows them (not read; see {@link readOverlayNetwork}).
 */
export async function readActualState(
  config: ResolvedConfig,
  options: { iptables: boolean; signal?: AbortSignal; known?: ReadonlyMap<string, Pick<ActualNetwork, 'neighbours' | 'fdb'>> },
): Promise<ActualState> {
  const names = await listOverlayNamespaces(config.prefix);
  const [networks, host] = await Promise.all([
    mapConcurrent(names, READ_CONCURRENCY, (n) => readOverlayNetwork(config.prefix, n, options.signal, options.known?.get(networkIdOfNetns(config.prefix, n)!))),
    readHost(config, options),
  ]);
  return { prefix: config.prefix, networks, host };
}

/** What each sandbox path of `desired` is: a network namespace, missing, or something else. */
export async function probeSandboxes(desired: DesiredState): Promise<Record<string, SandboxProbe>> {
  const paths = new Set<string>();
  for (const n of desired.networks) for (const e of n.endpoints) if (e.sandbox?.path.startsWith('/')) paths.add(e.sandbox.path);
  const out: Record<string, SandboxProbe> = {};
  await Promise.all(
    [...paths].map(async (p) => {
      out[p] = await probeNetnsAsync(p);
    }),
  );
  return out;
}
