/**
 * MTU rules of overlay networks, pure. One MTU per network, the same on every host (a host with a
 * bigger one would send frames its peers' interfaces drop); by default the creating host's underlay
 * MTU minus the VXLAN overhead of its VTEP's address family.
 *
 * Overhead of one VXLAN packet on the underlay: outer IP header (IPv4 20, IPv6 40 bytes) + UDP 8 +
 * VXLAN 8 + the inner Ethernet header 14 = 50 over IPv4, 70 over IPv6. Checked on kernel 6.18 with a
 * 1400-byte underlay: MTU 1350 on every overlay interface, `ping -M do -s 1322` (1350 bytes of IPv4)
 * crosses hosts and `-s 1323` fails in the sender with "message too long, mtu=1350".
 */

import type { Family } from '@kvnet/netaddr';

/** VXLAN overhead over an IPv4 underlay, bytes. */
export const VXLAN_OVERHEAD_BYTES = 50;
/** VXLAN overhead over an IPv6 underlay, bytes. */
export const VXLAN_OVERHEAD_IPV6_BYTES = 70;
/** Smallest MTU an IPv4 network may have (RFC 791: every host must accept 68-byte datagrams). */
export const MIN_MTU_IPV4 = 68;
/** Smallest MTU a network with an IPv6 subnet may have (RFC 8200); below it Linux disables IPv6 on the interface. */
export const MIN_MTU_IPV6 = 1280;
/** Largest MTU Linux interfaces take. */
export const MAX_MTU = 65535;

/** Bytes VXLAN adds on an underlay of `family`: 50 (IPv4) or 70 (IPv6). */
export function vxlanOverhead(underlayFamily: Family): number {
  return underlayFamily === 6 ? VXLAN_OVERHEAD_IPV6_BYTES : VXLAN_OVERHEAD_BYTES;
}

/** The largest overlay MTU an underlay carries without fragmenting: underlay MTU − overhead. */
export function overlayMtuFor(underlayMtu: number, underlayFamily: Family): number {
  return underlayMtu - vxlanOverhead(underlayFamily);
}

/** The smallest MTU a network may have: 1280 when it has an IPv6 subnet, else 68. */
export function minimumMtu(hasIpv6: boolean): number {
  return hasIpv6 ? MIN_MTU_IPV6 : MIN_MTU_IPV4;
}

/** What {@link checkNetworkMtu} needs to know about the network and this host's underlay. */
export interface NetworkMtuContext {
  /** The network has at least one IPv6 subnet. */
  readonly hasIpv6: boolean;
  /** This host's underlay MTU; omitted: no upper check beyond {@link MAX_MTU}. */
  readonly underlayMtu?: number;
  /** Family of this host's VTEP address (decides the overhead); default IPv4. */
  readonly underlayFamily?: Family;
  /** The underlay interface, for the message (e.g. `eth0`). */
  readonly underlayIfname?: string;
}

/** Why an MTU is refused, with the limit it broke. */
export interface MtuProblem {
  /** `invalid`: not an integer; `too-small`: below the family minimum; `too-large`: more than the underlay carries (or than 65535). */
  readonly kind: 'invalid' | 'too-small' | 'too-large';
  /** The bound that was crossed. */
  readonly limit: number;
  /** Completes "MTU N …", e.g. "is below 1280, the minimum for a network with an IPv6 subnet". */
  readonly reason: string;
}

/**
 * Checks a network MTU: an integer, at least the IPv4 minimum (68) or, with an IPv6 subnet, the IPv6
 * minimum (1280), and at most what the underlay carries (underlay MTU − 50, or − 70 for an IPv6 VTEP).
 * Returns undefined when it fits. The agent uses this to refuse `--mtu`/`com.docker.network.driver.mtu`
 * at creation and to report a network that does not fit this host's underlay.
 */
export function checkNetworkMtu(mtu: unknown, ctx: NetworkMtuContext): MtuProblem | undefined {
  if (typeof mtu !== 'number' || !Number.isInteger(mtu)) return { kind: 'invalid', limit: MAX_MTU, reason: 'is not an integer' };
  const min = minimumMtu(ctx.hasIpv6);
  if (mtu < min) {
    return { kind: 'too-small', limit: min, reason: ctx.hasIpv6 ? `is below ${min}, the minimum for a network with an IPv6 subnet` : `is below ${min}, the IPv4 minimum` };
  }
  if (ctx.underlayMtu !== undefined) {
    const family = ctx.underlayFamily ?? 4;
    const max = overlayMtuFor(ctx.underlayMtu, family);
    if (mtu > max) {
      const where = ctx.underlayIfname ? `underlay ${ctx.underlayIfname}` : 'the underlay';
      return {
        kind: 'too-large',
        limit: max,
        reason: `is above ${max}, what ${where} carries (MTU ${ctx.underlayMtu} − ${vxlanOverhead(family)} bytes of VXLAN over IPv${family})`,
      };
    }
  }
  if (mtu > MAX_MTU) return { kind: 'too-large', limit: MAX_MTU, reason: `is above ${MAX_MTU}, the largest MTU Linux takes` };
  return undefined;
}
