/** Validation and defaults of {@link DataplaneConfig}; the rest of the package reads only the resolved form. */

import { canonicalIp, cidrOf, ipFamily, type Cidr, type Family } from '@kvnet/netaddr';
import type { DataplaneConfig, NetnsTarget } from './dataplane.ts';
import { InvalidConfigError } from './errors.ts';
import { MAX_MTU, MIN_MTU_IPV4, overlayMtuFor, vxlanOverhead } from './mtu.ts';
import { ifnameProblem, netnsNameProblem, netnsPathProblem, PREFIX_PATTERN } from './names.ts';

export const DEFAULT_VXLAN_PORT = 4789;
export const DEFAULT_UNDERLAY_MTU = 1500;
export const DEFAULT_GATEWAY_BRIDGE_NAME = 'docker_gwbridge';
export const DEFAULT_GATEWAY_POOL = '172.18.0.0/16';
/**
 * First candidate IPv6 subnet of the gateway bridge: a ULA /64 whose 40-bit global id spells "kvngw"
 * (6b 76 6e 67 77). It is host-local and masqueraded, like 172.18.0.0/16, so every host may use the
 * same one; the bridge takes the first /64 from here to the end of its /48 that no host route covers.
 */
export const DEFAULT_GATEWAY_POOL6 = 'fd6b:766e:6777::/64';
/** Widest IPv4 gateway bridge subnet prefix that still leaves room for a gateway and containers. */
const GATEWAY_MAX_PREFIX_IPV4 = 30;
/** The IPv6 gateway bridge subnet: one /64, the size every IPv6 host stack expects. */
const GATEWAY_PREFIX_IPV6 = 64;

/** When the gateway bridge carries IPv6 (see {@link GatewayBridgeConfig.ipv6}). */
export type GatewayIpv6Mode = 'auto' | 'on' | 'off';

export interface ResolvedConfig {
  readonly prefix: string;
  readonly host: NetnsTarget;
  /** The host netns for messages: its name, path, or "(own)". */
  readonly hostLabel: string;
  /** Canonical VTEP address. */
  readonly vtep: string;
  readonly vtepFamily: Family;
  readonly vxlanPort: number;
  readonly underlayMtu: number;
  /** Default MTU of overlay interfaces: underlay MTU − the VXLAN overhead of the VTEP's family. */
  readonly overlayMtu: number;
  readonly gateway?: {
    readonly name: string;
    readonly pool: string;
    readonly ipv6: GatewayIpv6Mode;
    readonly pool6: Cidr;
  };
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
  const vtep = canonicalIp(config.vtep);
  const vtepFamily = ipFamily(config.vtep);
  if (vtep === undefined || vtepFamily === undefined) throw new InvalidConfigError('vtep', config.vtep, 'is not an IPv4 or IPv6 address');
  const vxlanPort = config.vxlanPort ?? DEFAULT_VXLAN_PORT;
  if (!Number.isInteger(vxlanPort) || vxlanPort < 1 || vxlanPort > 65535) {
    throw new InvalidConfigError('vxlanPort', vxlanPort, 'must be a UDP port number (1…65535)');
  }
  const underlayMtu = config.underlayMtu ?? DEFAULT_UNDERLAY_MTU;
  const lowest = MIN_MTU_IPV4 + vxlanOverhead(vtepFamily);
  if (!Number.isInteger(underlayMtu) || underlayMtu < lowest || underlayMtu > MAX_MTU) {
    throw new InvalidConfigError('underlayMtu', underlayMtu, `must be an integer in ${lowest}…${MAX_MTU}`);
  }
  let gateway: ResolvedConfig['gateway'];
  if (config.gatewayBridge !== false) {
    const name = config.gatewayBridge?.name ?? DEFAULT_GATEWAY_BRIDGE_NAME;
    const problem = ifnameProblem(name);
    if (problem) throw new InvalidConfigError('gatewayBridge.name', name, problem);
    const pool = config.gatewayBridge?.pool ?? DEFAULT_GATEWAY_POOL;
    const cidr = cidrOf(pool);
    if (!cidr || cidr.family !== 4 || cidr.prefix > GATEWAY_MAX_PREFIX_IPV4) {
      throw new InvalidConfigError('gatewayBridge.pool', pool, `must be an IPv4 network (no host bits) of /${GATEWAY_MAX_PREFIX_IPV4} or larger`);
    }
    const pool6Text = config.gatewayBridge?.pool6 ?? DEFAULT_GATEWAY_POOL6;
    const pool6 = cidrOf(pool6Text);
    if (!pool6 || pool6.family !== 6 || pool6.prefix !== GATEWAY_PREFIX_IPV6) {
      throw new InvalidConfigError('gatewayBridge.pool6', pool6Text, `must be an IPv6 /${GATEWAY_PREFIX_IPV6} network (no host bits), e.g. ${DEFAULT_GATEWAY_POOL6}`);
    }
    const ipv6Option = config.gatewayBridge?.ipv6 ?? false;
    if (ipv6Option !== 'auto' && ipv6Option !== true && ipv6Option !== false) {
      throw new InvalidConfigError('gatewayBridge.ipv6', ipv6Option, "must be 'auto', true or false");
    }
    const ipv6: GatewayIpv6Mode = ipv6Option === 'auto' ? 'auto' : ipv6Option ? 'on' : 'off';
    gateway = { name, pool, ipv6, pool6 };
  }
  const host = netnsTargetOf(config.hostNetns);
  return {
    prefix: config.namePrefix,
    host,
    hostLabel: netnsLabel(host),
    vtep,
    vtepFamily,
    vxlanPort,
    underlayMtu,
    overlayMtu: overlayMtuFor(underlayMtu, vtepFamily),
    ...(gateway ? { gateway } : {}),
  };
}
