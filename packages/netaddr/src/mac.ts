/**
 * MAC addresses of overlay endpoints. Every host derives a remote endpoint's MAC from its address
 * alone, so no MAC ever has to be agreed on:
 *
 * - an endpoint with an IPv4 address (IPv4-only or dual stack): `02:42:` followed by the four IPv4
 *   bytes (10.0.1.2 → `02:42:0a:00:01:02`), Docker's overlay convention;
 * - an IPv6-only endpoint: `06:` followed by the first five bytes of SHA-256 over the sixteen address
 *   bytes. Five bytes of the address itself would collide between subnets of one network (fd00:1::5
 *   and fd00:2::5 share their low bytes, and a network's subnets share one L2 segment); a hash of the
 *   whole address does not, short of a 1-in-2^40 accident, which the data plane reports as a MAC
 *   conflict. The first byte `06` (locally administered, unicast) keeps the two rules apart, so an
 *   IPv6-derived MAC never equals an IPv4-derived one.
 */

import { createHash } from 'node:crypto';
import { ipBytes, type IpAddress } from './address.ts';

/** First two bytes of a MAC derived from an IPv4 address. */
export const IPV4_MAC_PREFIX = [0x02, 0x42] as const;
/** First byte of a MAC derived from an IPv6 address (locally administered, unicast). */
export const IPV6_MAC_FIRST_BYTE = 0x06;
/** Hash bytes after {@link IPV6_MAC_FIRST_BYTE}. */
const IPV6_MAC_HASH_BYTES = 5;

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function hex(bytes: readonly number[]): string {
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The MAC in lowercase colon form, or undefined when malformed, multicast or all zeros. */
export function normalizeMac(text: string): string | undefined {
  if (typeof text !== 'string') return undefined;
  const mac = text.toLowerCase();
  if (!MAC.test(mac)) return undefined;
  if (parseInt(mac.slice(0, 2), 16) & 1) return undefined;
  if (mac === '00:00:00:00:00:00') return undefined;
  return mac;
}

/** The MAC an endpoint with address `ip` gets (see the module comment for both rules). */
export function macFromIp(ip: IpAddress): string {
  const bytes = ipBytes(ip);
  if (ip.family === 4) return hex([...IPV4_MAC_PREFIX, ...bytes]);
  const digest = createHash('sha256').update(bytes).digest();
  return hex([IPV6_MAC_FIRST_BYTE, ...digest.subarray(0, IPV6_MAC_HASH_BYTES)]);
}

/**
 * The MAC of an endpoint with these addresses (bare or `ip/len`; undefined ones skipped): derived
 * from the IPv4 address when there is one (dual stack keeps the IPv4 rule), else from the IPv6 one.
 * Undefined when neither is a valid address.
 */
export function endpointMac(addresses: { readonly ipv4?: IpAddress; readonly ipv6?: IpAddress }): string | undefined {
  if (addresses.ipv4) return macFromIp(addresses.ipv4);
  if (addresses.ipv6) return macFromIp(addresses.ipv6);
  return undefined;
}
