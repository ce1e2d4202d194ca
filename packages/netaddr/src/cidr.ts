/**
 * Networks (CIDRs) and interface addresses for both families, on `bigint`s.
 *
 * Two text forms, two parsers, because they mean different things:
 * - a **network** (`10.0.1.0/24`, `fd00:1::/64`): {@link parseCidr} refuses host bits, so a typo such as
 *   `10.0.1.1/24` for a subnet is reported with the network it probably meant;
 * - an **interface address** (`10.0.1.2/24`, `fd00:1::2/64`): {@link parseInterfaceAddress} keeps the
 *   host bits and gives the network too — what iproute2 prints and takes for `addr add`.
 *
 * The ordinal arithmetic (ordinal = address − network address) is what the IPAM's bitmaps index by.
 */

import { familyBits, formatIp, parseIp, type Family, type IpAddress } from './address.ts';

/** A parsed network: `base` has every host bit cleared. */
export interface Cidr {
  readonly family: Family;
  /** The network address. */
  readonly base: bigint;
  /** Prefix length, 0…32 or 0…128. */
  readonly prefix: number;
}

/** An address with the prefix length of its network, as on an interface (`10.0.1.2/24`). */
export interface InterfaceAddress {
  /** The address itself, host bits included. */
  readonly ip: IpAddress;
  readonly prefix: number;
  /** The network it lies in (host bits cleared). */
  readonly network: Cidr;
}

/** Result of {@link parseCidr}: the network, or why the text is not one. */
export type CidrParse =
  | { readonly ok: true; readonly cidr: Cidr }
  | { readonly ok: false; readonly reason: string; readonly canonical?: string };

const PREFIX_DIGITS = /^(0|[1-9][0-9]{0,2})$/;

/** The host bits of a prefix length as a mask (all ones for /0 of the family). */
export function hostMask(family: Family, prefix: number): bigint {
  return (1n << BigInt(familyBits(family) - prefix)) - 1n;
}

/** Number of addresses in the network: 2^(bits − prefix). */
export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(familyBits(c.family) - c.prefix);
}

/** Last address of the network (the IPv4 broadcast address). */
export function cidrLast(c: Cidr): bigint {
  return c.base + cidrSize(c) - 1n;
}

function splitPrefix(text: string): { ip: IpAddress; prefix: number } | { reason: string } {
  if (typeof text !== 'string') return { reason: 'it is not a string' };
  const slash = text.indexOf('/');
  if (slash === -1) return { reason: 'it has no prefix length (expected ip/len)' };
  const ip = parseIp(text.slice(0, slash));
  if (!ip) return { reason: 'it is not an IPv4 or IPv6 address with a prefix length' };
  const lenText = text.slice(slash + 1);
  if (!PREFIX_DIGITS.test(lenText)) return { reason: `prefix length "${lenText}" is not a number` };
  const prefix = Number(lenText);
  if (prefix > familyBits(ip.family)) return { reason: `prefix length ${prefix} is longer than ${familyBits(ip.family)}` };
  return { ip, prefix };
}

/**
 * Parses a network `ip/prefix`. Refuses host bits set (the reason names the network meant, also in
 * `canonical`), a missing or out-of-range prefix, and anything {@link parseIp} refuses.
 */
export function parseCidr(text: string): CidrParse {
  const r = splitPrefix(text);
  if ('reason' in r) return { ok: false, reason: r.reason };
  const base = r.ip.value & ~hostMask(r.ip.family, r.prefix);
  if (base !== r.ip.value) {
    const canonical = formatCidr({ family: r.ip.family, base, prefix: r.prefix });
    return { ok: false, reason: `host bits are set (the network is ${canonical})`, canonical };
  }
  return { ok: true, cidr: { family: r.ip.family, base, prefix: r.prefix } };
}

/** The network of `text`, or undefined when {@link parseCidr} refuses it. */
export function cidrOf(text: string): Cidr | undefined {
  const r = parseCidr(text);
  return r.ok ? r.cidr : undefined;
}

/** Parses `ip/prefix` keeping the host bits (`10.0.1.2/24`); undefined when malformed. */
export function parseInterfaceAddress(text: string): InterfaceAddress | undefined {
  const r = splitPrefix(text);
  if ('reason' in r) return undefined;
  return { ip: r.ip, prefix: r.prefix, network: { family: r.ip.family, base: r.ip.value & ~hostMask(r.ip.family, r.prefix), prefix: r.prefix } };
}

/** `10.0.1.2/24`, canonical. */
export function formatInterfaceAddress(a: InterfaceAddress): string {
  return `${formatIp(a.ip.family, a.ip.value)}/${a.prefix}`;
}

/** `10.0.1.0/24`, `fd00:1::/64`. */
export function formatCidr(c: Cidr): string {
  return `${formatIp(c.family, c.base)}/${c.prefix}`;
}

/** True when `ip` is an address of network `c` (same family, inside). */
export function cidrContainsIp(c: Cidr, ip: IpAddress): boolean {
  return c.family === ip.family && ip.value >= c.base && ip.value <= cidrLast(c);
}

/** True when `inner` lies entirely inside `outer` (equal counts as inside). */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return outer.family === inner.family && inner.prefix >= outer.prefix && inner.base >= outer.base && cidrLast(inner) <= cidrLast(outer);
}

/** True when the two networks share at least one address (then one contains the other). */
export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.base <= cidrLast(b) && b.base <= cidrLast(a);
}

/** The block of the same size right after `c`, or undefined past the end of the address space. */
export function nextCidr(c: Cidr): Cidr | undefined {
  const next = cidrLast(c) + 1n;
  if (next >> BigInt(familyBits(c.family)) !== 0n) return undefined;
  return { family: c.family, base: next, prefix: c.prefix };
}

/**
 * Ordinals of a network that are never host addresses because of their position: the network
 * address and, for IPv4, the broadcast address. IPv4 /31 and /32 (RFC 3021) and IPv6 /127 and /128
 * (RFC 6164) have none. (The IPv6 network address is the Subnet-Router anycast address.)
 */
export function structuralReserved(c: Cidr): { network?: bigint; broadcast?: bigint } {
  if (c.prefix >= familyBits(c.family) - 1) return {};
  if (c.family === 4) return { network: 0n, broadcast: cidrSize(c) - 1n };
  return { network: 0n };
}

/** True when `ip` is the network or (IPv4) broadcast address of `c`. */
export function isStructurallyReserved(c: Cidr, ip: IpAddress): boolean {
  if (!cidrContainsIp(c, ip)) return false;
  const s = structuralReserved(c);
  const ord = ip.value - c.base;
  return s.network === ord || s.broadcast === ord;
}

/** True when `ip` is inside `c` and may be given to a host (neither network nor broadcast address). */
export function isHostAddress(c: Cidr, ip: IpAddress): boolean {
  return cidrContainsIp(c, ip) && !isStructurallyReserved(c, ip);
}

/** The first ordinal that is neither network nor broadcast address: the default gateway. */
export function firstUsableOrdinal(c: Cidr): bigint {
  return structuralReserved(c).network === undefined ? 0n : 1n;
}

/**
 * The subnets of length `size` inside `base`, in address order, starting at the first one at or
 * after `from` (a value inside base). Yields their network addresses.
 */
export function* subnetsOf(base: Cidr, size: number, from: bigint = base.base): Generator<bigint> {
  const step = 1n << BigInt(familyBits(base.family) - size);
  const last = cidrLast(base);
  let cur = from <= base.base ? base.base : base.base + ((from - base.base + step - 1n) / step) * step;
  for (; cur <= last; cur += step) yield cur;
}

/**
 * The lowest host address of `subnet` (network text, host bits tolerated) that is neither `gateway`
 * nor in `used` (bare canonical addresses), as `ip/len`; undefined when none is left or `subnet` is
 * malformed. Walks upward from the first host address, so it costs O(|used|), not O(subnet size).
 */
export function lowestFreeAddress(subnet: string, gateway: string, used: ReadonlySet<string>): string | undefined {
  const parsed = parseInterfaceAddress(subnet);
  if (!parsed) return undefined;
  const c = parsed.network;
  const s = structuralReserved(c);
  const last = cidrLast(c) - (s.broadcast === undefined ? 0n : 1n);
  for (let v = c.base + firstUsableOrdinal(c); v <= last; v++) {
    const ip = formatIp(c.family, v);
    if (ip === gateway || used.has(ip)) continue;
    return `${ip}/${c.prefix}`;
  }
  return undefined;
}
