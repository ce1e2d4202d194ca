/**
 * @packageDocumentation
 * Address math for every kvnet package: IPv4 and IPv6 addresses and networks on `bigint`s, strict
 * parsing, canonical (RFC 5952) formatting, ordinal arithmetic for allocators, and the MAC rule of
 * overlay endpoints. No dependencies; nothing here does I/O.
 *
 * ```ts
 * const net = cidrOf('fd00:1::/64')!;                       // { family: 6, base: …, prefix: 64 }
 * cidrContainsIp(net, parseIp('fd00:1::5')!);              // true
 * formatIp(6, net.base + 1n);                              // 'fd00:1::1'
 * macFromIp(parseIp('10.0.1.2')!);                         // '02:42:0a:00:01:02'
 * ```
 */

export {
  IPV4_BITS,
  IPV6_BITS,
  canonicalIp,
  familyBits,
  formatIp,
  ipBytes,
  ipFamily,
  ipToString,
  parseIp,
  type Family,
  type IpAddress,
} from './address.ts';
export {
  cidrContains,
  cidrContainsIp,
  cidrLast,
  cidrOf,
  cidrOverlaps,
  cidrSize,
  firstUsableOrdinal,
  formatCidr,
  formatInterfaceAddress,
  hostMask,
  isHostAddress,
  isStructurallyReserved,
  lowestFreeAddress,
  nextCidr,
  parseCidr,
  parseInterfaceAddress,
  structuralReserved,
  subnetsOf,
  type Cidr,
  type CidrParse,
  type InterfaceAddress,
} from './cidr.ts';
export { IPV4_MAC_PREFIX, IPV6_MAC_FIRST_BYTE, endpointMac, macFromIp, normalizeMac } from './mac.ts';
export { formatIpv4, ipv4CidrContains, macFromIpv4, parseIpv4, parseIpv4Cidr, type Ipv4Cidr } from './ipv4.ts';
