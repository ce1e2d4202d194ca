/**
 * CIDR math for IPv4 and IPv6 on `bigint`s: strict parsing (no octal, no zone ids, no shorthand
 * IPv4 like `10.1`), canonical formatting (RFC 5952 for IPv6) and the ordinal arithmetic the
 * allocator uses (ordinal = address − network address).
 */

export type Family = 4 | 6;

export interface IpAddress {
  readonly family: Family;
  readonly value: bigint;
}

/** A parsed network: `base` has every host bit cleared. */
export interface Cidr {
  readonly family: Family;
  readonly base: bigint;
  readonly prefix: number;
}

const V4_DECIMAL = /^(0|[1-9][0-9]{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

export function familyBits(family: Family): 32 | 128 {
  return family === 4 ? 32 : 128;
}

function parseV4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const p of parts) {
    if (!V4_DECIMAL.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    value = (value << 8n) | BigInt(n);
  }
  return value;
}

function parseV6(text: string): bigint | undefined {
  if (text.length === 0 || text.length > 45) return undefined;
  let groups: string[];
  let tailV4: bigint | undefined;
  const lastColon = text.lastIndexOf(':');
  if (lastColon === -1) return undefined;
  if (text.includes('.', lastColon)) {
    tailV4 = parseV4(text.slice(lastColon + 1));
    if (tailV4 === undefined) return undefined;
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  const want = 8;
  const doubles = text.split('::');
  if (doubles.length > 2) return undefined;
  if (doubles.length === 2) {
    const head = doubles[0] === '' ? [] : doubles[0]!.split(':');
    const tail = doubles[1] === '' ? [] : doubles[1]!.split(':');
    const missing = want - head.length - tail.length;
    if (missing < 1) return undefined;
    groups = [...head, ...Array<string>(missing).fill('0'), ...tail];
  } else {
    groups = text.split(':');
    if (groups.length !== want) return undefined;
  }
  let value = 0n;
  for (const g of groups) {
    if (!HEX_GROUP.test(g)) return undefined;
    value = (value << 16n) | BigInt(parseInt(g, 16));
  }
  if (tailV4 !== undefined) value = (value & ~0xffffffffn) | tailV4;
  return value;
}

/** Parses a bare IPv4 or IPv6 address; undefined when it is not one. */
export function parseIp(text: string): IpAddress | undefined {
  if (typeof text !== 'string') return undefined;
  if (text.includes(':')) {
    const value = parseV6(text);
    return value === undefined ? undefined : { family: 6, value };
  }
  const value = parseV4(text);
  return value === undefined ? undefined : { family: 4, value };
}

/** Dotted quad, or RFC 5952 IPv6 (lowercase, longest zero run of two or more groups as `::`). */
export function formatIp(family: Family, value: bigint): string {
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 255n)).join('.');
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart === -1) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

export function hostMask(family: Family, prefix: number): bigint {
  return (1n << BigInt(familyBits(family) - prefix)) - 1n;
}

/** Number of addresses in the network (2^(bits − prefix)). */
export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(familyBits(c.family) - c.prefix);
}

/** Last address of the network (the IPv4 broadcast address). */
export function cidrLast(c: Cidr): bigint {
  return c.base + cidrSize(c) - 1n;
}

export type CidrParse =
  | { ok: true; cidr: Cidr }
  | { ok: false; reason: string; canonical?: string };

/**
 * Parses `ip/prefix`. Refuses host bits set (reason names the canonical form), a missing or
 * out-of-range prefix, and anything {@link parseIp} refuses.
 */
export function parseCidr(text: string): CidrParse {
  if (typeof text !== 'string') return { ok: false, reason: 'it is not a string' };
  const slash = text.indexOf('/');
  if (slash === -1) return { ok: false, reason: 'it has no prefix length (expected ip/len)' };
  const ip = parseIp(text.slice(0, slash));
  if (!ip) return { ok: false, reason: 'it is not an IPv4 or IPv6 address with a prefix length' };
  const lenText = text.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(lenText)) return { ok: false, reason: `prefix length "${lenText}" is not a number` };
  const prefix = Number(lenText);
  if (prefix > familyBits(ip.family)) {
    return { ok: false, reason: `prefix length ${prefix} is longer than ${familyBits(ip.family)}` };
  }
  const base = ip.value & ~hostMask(ip.family, prefix);
  if (base !== ip.value) {
    const canonical = formatCidr({ family: ip.family, base, prefix });
    return { ok: false, reason: `host bits are set (the network is ${canonical})`, canonical };
  }
  return { ok: true, cidr: { family: ip.family, base, prefix } };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.family, c.base)}/${c.prefix}`;
}

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

/**
 * Ordinals of a pool that are never handed out because of their position: the network address and,
 * for IPv4, the broadcast address. RFC 3021 /31 and /32 (and IPv6 /127, /128, RFC 6164) have none.
 */
export function structuralReserved(c: Cidr): { network?: bigint; broadcast?: bigint } {
  const bits = familyBits(c.family);
  if (c.prefix >= bits - 1) return {};
  if (c.family === 4) return { network: 0n, broadcast: cidrSize(c) - 1n };
  return { network: 0n };
}

/** The first ordinal that is neither network nor broadcast address: the default gateway. */
export function firstUsableOrdinal(c: Cidr): bigint {
  return structuralReserved(c).network === undefined ? 0n : 1n;
}

/**
 * The subnets of length `size` inside `base`, in address order, starting at the first one at or
 * after `from` (a value inside base). Yields bigints (network addresses).
 */
export function* subnetsOf(base: Cidr, size: number, from: bigint = base.base): Generator<bigint> {
  const step = 1n << BigInt(familyBits(base.family) - size);
  const last = cidrLast(base);
  let cur = from <= base.base ? base.base : base.base + ((from - base.base + step - 1n) / step) * step;
  for (; cur <= last; cur += step) yield cur;
}
