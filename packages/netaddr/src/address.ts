/**
 * IP addresses as `{family, value}` with the value a `bigint`, so IPv4 and IPv6 share every
 * operation. Parsing is strict — no octal or shorthand IPv4 (`010.0.0.1`, `10.1`), no zone ids
 * (`fe80::1%eth0`), no leading or trailing spaces — because every address kvnet parses ends up in
 * the store or in an iproute2 line, where a lenient reading would silently mean something else.
 * Formatting is canonical: dotted quad, and RFC 5952 for IPv6 (lowercase, the longest run of two or
 * more zero groups as `::`, the first one on a tie), which is also how iproute2 prints addresses.
 */

/** 4 or 6. */
export type Family = 4 | 6;

/** A parsed address. `value` is the address as an unsigned integer of 32 or 128 bits. */
export interface IpAddress {
  readonly family: Family;
  readonly value: bigint;
}

/** Bits in an IPv4 address. */
export const IPV4_BITS = 32;
/** Bits in an IPv6 address. */
export const IPV6_BITS = 128;
/** Groups of 16 bits in an IPv6 address. */
const IPV6_GROUPS = 8;
/** Longest IPv6 text form: eight groups of four with seven colons, or six groups and a dotted quad. */
const IPV6_MAX_CHARS = 45;

const V4_DECIMAL = /^(0|[1-9][0-9]{0,2})$/;
/** Exactly the dotted quads {@link parseIp} accepts, which are already canonical: a fast path for hot loops. */
const V4_CANONICAL = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** Address width of a family: 32 or 128. */
export function familyBits(family: Family): 32 | 128 {
  return family === 4 ? IPV4_BITS : IPV6_BITS;
}

// IPv4 is computed as a plain number and turned into a bigint once: the data plane parses and formats
// every peer's address on every apply (10 000 peers), and bigint arithmetic allocates per operation.
function parseV4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const p of parts) {
    if (!V4_DECIMAL.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    value = value * 256 + n;
  }
  return BigInt(value);
}

function parseV6(text: string): bigint | undefined {
  if (text.length === 0 || text.length > IPV6_MAX_CHARS) return undefined;
  let tailV4: bigint | undefined;
  const lastColon = text.lastIndexOf(':');
  if (lastColon === -1) return undefined;
  if (text.includes('.', lastColon)) {
    // an embedded IPv4 tail (::ffff:10.1.2.3) stands for the last two groups
    tailV4 = parseV4(text.slice(lastColon + 1));
    if (tailV4 === undefined) return undefined;
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  let groups: string[];
  const doubles = text.split('::');
  if (doubles.length > 2) return undefined;
  if (doubles.length === 2) {
    const head = doubles[0] === '' ? [] : doubles[0]!.split(':');
    const tail = doubles[1] === '' ? [] : doubles[1]!.split(':');
    const missing = IPV6_GROUPS - head.length - tail.length;
    if (missing < 1) return undefined;
    groups = [...head, ...Array<string>(missing).fill('0'), ...tail];
  } else {
    groups = text.split(':');
    if (groups.length !== IPV6_GROUPS) return undefined;
  }
  // one bigint from 32 hex digits rather than eight shifts (each bigint operation allocates)
  let hex = '0x';
  for (const g of groups) {
    if (!HEX_GROUP.test(g)) return undefined;
    hex += g.padStart(4, '0');
  }
  const value = BigInt(hex);
  return tailV4 === undefined ? value : (value & ~0xffffffffn) | tailV4;
}

/** Parses a bare IPv4 or IPv6 address (no prefix length); undefined when `text` is not one. */
export function parseIp(text: string): IpAddress | undefined {
  if (typeof text !== 'string') return undefined;
  if (text.includes(':')) {
    const value = parseV6(text);
    return value === undefined ? undefined : { family: 6, value };
  }
  const value = parseV4(text);
  return value === undefined ? undefined : { family: 4, value };
}

/** Dotted quad, or RFC 5952 IPv6 (lowercase, the longest zero run of two or more groups as `::`). */
export function formatIp(family: Family, value: bigint): string {
  if (family === 4) {
    const n = Number(value);
    return `${Math.floor(n / 16_777_216) % 256}.${Math.floor(n / 65_536) % 256}.${Math.floor(n / 256) % 256}.${n % 256}`;
  }
  const digits = value.toString(16).padStart(IPV6_GROUPS * 4, '0');
  const groups: number[] = [];
  for (let i = 0; i < IPV6_GROUPS; i++) groups.push(parseInt(digits.slice(i * 4, i * 4 + 4), 16));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < IPV6_GROUPS; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < IPV6_GROUPS && groups[j] === 0) j++;
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

/** {@link formatIp} of a parsed address. */
export function ipToString(ip: IpAddress): string {
  return formatIp(ip.family, ip.value);
}

/** The canonical text of `text` (e.g. `FD00:0::1` → `fd00::1`), or undefined when it is not an address. */
export function canonicalIp(text: string): string | undefined {
  if (typeof text === 'string' && V4_CANONICAL.test(text)) return text;
  const ip = parseIp(text);
  return ip ? ipToString(ip) : undefined;
}

/** The family of `text`, or undefined when it is not an address. */
export function ipFamily(text: string): Family | undefined {
  return parseIp(text)?.family;
}

/** The address as bytes in network order (4 or 16). */
export function ipBytes(ip: IpAddress): Uint8Array {
  const n = familyBits(ip.family) / 8;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Number((ip.value >> BigInt((n - 1 - i) * 8)) & 0xffn);
  return out;
}
