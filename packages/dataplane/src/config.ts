/** Validation and defaults of {@link DataplaneConfig}; the rest of the package reads only the resolved form. */

import type { DataplaneConfig, NetnsTarget } from './dataplane.ts';
import { InvalidConfigError } from './errors.ts';
import { parseCidr, parseIpv4 } from './ipv4.ts';
import { ifnameProblem, netnsNameProblem, netnsPathProblem, PREFIX_PATTERN } from './names.ts';

export const DEFAULT_VXLAN_PORT = 4789;
export const DEFAULT_UNDERLAY_MTU = 1500;
/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers. */
export const VXLAN_OVERHEAD_BYTES = 50;
export const DEFAULT_GATEWAY_BRIDGE_NAME = 'docker_gwbridge';
export const DEFAULT_GATEWAY_POOL = '172.18.0.0/16';
export const MIN_MTU = 68;
export const MAX_MTU = 65535;

export interface ResolvedConfig {
  readonly prefix: string;
  readonly host: NetnsTarget;
  /** The host netns for messages: its name, path, or "(own)". */
  readonly hostLabel: string;
  readonly vtep: string;
  readonly vxlanPort: number;
  readonly underlayMtu: number;
  /** Default MTU of overlay interfaces. */
  readonly overlayMtu: number;
  readonly gateway?: { readonly name: string; readonly pool: string };
}

/** The netns target for a configured namespace: a plain name lives under /run/netns. */
export function netnsTargetOf(netns: string | undefined): NetnsTarget {
  if (netns === undefined) return { kind: 'self' };
  return netns.includes('/') ? { kind: 'path', path: netns } : { kind: 'name', name: netns };
}

export function netnsLabel(target: NetnsTarget): string {
  return target.kind === 'self' ? '(own)' : target.kind === 'name' ? target.name : target.path;
}

export function resolveConfig(config: DataplaneConfig): ResolvedConfig {
  if (!PREFIX_PATTERN.test(config.namePrefix)) {
    throw new InvalidConfigError('namePrefix', config.namePrefix, 'must be 1 to 6 lowercase letters or digits');
  }
  if (config.hostNetns !== undefined) {
    const problem = config.hostNetns.includes('/')
      ? netnsPathProblem(config.hostNetns)
      : netnsNameProblem(config.hostNetns);
    if (problem) throw new InvalidConfigError('hostNetns', config.hostNetns, problem);
  }
  if (parseIpv4(config.vtep) === undefined) throw new InvalidConfigError('vtep', config.vtep, 'is not an IPv4 address');
  const vxlanPort = config.vxlanPort ?? DEFAULT_VXLAN_PORT;
  if (!Number.isInteger(vxlanPort) || vxlanPort < 1 || vxlanPort > 65535) {
    throw new InvalidConfigError('vxlanPort', vxlanPort, 'must be a UDP port number (1…65535)');
  }
  const underlayMtu = config.underlayMtu ?? DEFAULT_UNDERLAY_MTU;
  if (!Number.isInteger(underlayMtu) || underlayMtu < MIN_MTU + VXLAN_OVERHEAD_BYTES || underlayMtu > MAX_MTU) {
    throw new InvalidConfigError('underlayMtu', underlayMtu, `must be an integer in ${MIN_MTU + VXLAN_OVERHEAD_BYTES}…${MAX_MTU}`);
  }
  let gateway: ResolvedConfig['gateway'];
  if (config.gatewayBridge !== false) {
    const name = config.gatewayBridge?.name ?? DEFAULT_GATEWAY_BRIDGE_NAME;
    const problem = ifnameProblem(name);
    if (problem) throw new InvalidConfigError('gatewayBridge.name', name, problem);
    const pool = config.gatewayBridge?.pool ?? DEFAULT_GATEWAY_POOL;
    const cidr = parseCidr(pool);
    if (!cidr || cidr.address !== cidr.network || cidr.prefixLength > 30) {
      throw new InvalidConfigError('gatewayBridge.pool', pool, 'must be an IPv4 network (no host bits) of /30 or larger');
    }
    gateway = { name, pool };
  }
  const host = netnsTargetOf(config.hostNetns);
  return {
    prefix: config.namePrefix,
    host,
    hostLabel: netnsLabel(host),
    vtep: config.vtep,
    vxlanPort,
    underlayMtu,
    overlayMtu: underlayMtu - VXLAN_OVERHEAD_BYTES,
    ...(gateway ? { gateway } : {}),
  };
}
