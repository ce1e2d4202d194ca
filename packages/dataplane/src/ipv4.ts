/** The little IPv4 arithmetic the data plane needs: parse, contain, overlap, next block, MAC from IP. */

export interface Ipv4Cidr {
  /** The address as written (host bits may be set, e.g. 10.0.1.2/24). */
  readonly address: number;
  readonly prefixLength: number;
  /** The network address (host bits cleared). */
  readonly network: number;
}

const DOTTED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** The address as an unsigned 32-bit number, or undefined when `text` is not a dotted IPv4 address. */
export function parseIpv4(text: string): number | undefined {
  const m = DOTTED.exec(text);
  if (!m) return undefined;
  let value = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255 || (m[i]!.length > 1 && m[i]!.startsWith('0'))) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.');
}

function maskOf(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
}

/** `a.b.c.d/n`, or undefined when malformed. */
export function parseCidr(text: string): Ipv4Cidr | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const address = parseIpv4(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (address === undefined || !/^\d{1,2}$/.test(lenText)) return undefined;
  const prefixLength = Number(lenText);
  if (prefixLength > 32) return undefined;
  return { address, prefixLength, network: (address & maskOf(prefixLength)) >>> 0 };
}

/** `10.0.1.0/24` for the network of `cidr`. */
export function formatNetwork(cidr: Ipv4Cidr): string {
  return `${formatIpv4(cidr.network)}/${cidr.prefixLength}`;
}

export function cidrContains(cidr: Ipv4Cidr, address: number): boolean {
  return ((address & maskOf(cidr.prefixLength)) >>> 0) === cidr.network;
}

export function cidrsOverlap(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  const shorter = Math.min(a.prefixLength, b.prefixLength);
  const mask = maskOf(shorter);
  return ((a.network & mask) >>> 0) === ((b.network & mask) >>> 0);
}

/** The block of the same size right after `cidr`, or undefined past 255.255.255.255. */
export function nextBlock(cidr: Ipv4Cidr): Ipv4Cidr | undefined {
  const size = 2 ** (32 - cidr.prefixLength);
  const next = cidr.network + size;
  if (next > 0xffffffff) return undefined;
  return { address: next, prefixLength: cidr.prefixLength, network: next };
}

/** Whether `address` is the network or broadcast address of `cidr` (only meaningful below /31). */
export function isNetworkOrBroadcast(cidr: Ipv4Cidr, address: number): boolean {
  if (cidr.prefixLength >= 31) return false;
  const broadcast = (cidr.network | (~maskOf(cidr.prefixLength) >>> 0)) >>> 0;
  return address === cidr.network || address === broadcast;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** The MAC in lowercase colon form, or undefined when malformed, multicast or all zeros. */
export function normalizeMac(text: string): string | undefined {
  const mac = text.toLowerCase();
  if (!MAC.test(mac)) return undefined;
  if (parseInt(mac.slice(0, 2), 16) & 1) return undefined;
  if (mac === '00:00:00:00:00:00') return undefined;
  return mac;
}

/** Docker's overlay convention: `02:42:` followed by the four IPv4 bytes (10.0.1.2 → 02:42:0a:00:01:02). */
export function macFromIpv4(address: number): string {
  const bytes = [0x02, 0x42, address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}
