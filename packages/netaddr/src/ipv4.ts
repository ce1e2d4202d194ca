/**
 * IPv4 addresses as plain numbers (0 … 2^32 − 1), for code that only ever handles IPv4 and wants
 * number arithmetic (the agent's egress addresses and API checks). A view over the family-generic
 * functions of this package, not a second implementation: parsing and formatting go through them.
 */

import { formatIp, parseIp } from './address.ts';
import { parseInterfaceAddress } from './cidr.ts';
import { macFromIp } from './mac.ts';

/** An IPv4 interface address or network as numbers. */
export interface Ipv4Cidr {
  /** The address as written (host bits may be set, e.g. 10.0.1.2/24). */
  readonly address: number;
  readonly prefixLength: number;
  /** The network address (host bits cleared). */
  readonly network: number;
}

/** The address as an unsigned 32-bit number, or undefined when `text` is not a strict dotted IPv4 address. */
export function parseIpv4(text: string): number | undefined {
  const ip = parseIp(text);
  return ip?.family === 4 ? Number(ip.value) : undefined;
}

/** Dotted quad of an unsigned 32-bit number. */
export function formatIpv4(value: number): string {
  return formatIp(4, BigInt(value >>> 0));
}

/** `a.b.c.d/n` (host bits allowed), or undefined when malformed or not IPv4. */
export function parseIpv4Cidr(text: string): Ipv4Cidr | undefined {
  const a = parseInterfaceAddress(text);
  if (!a || a.ip.family !== 4) return undefined;
  return { address: Number(a.ip.value), prefixLength: a.prefix, network: Number(a.network.base) };
}

/** True when `address` lies in the network of `cidr`. */
export function ipv4CidrContains(cidr: Ipv4Cidr, address: number): boolean {
  const size = 2 ** (32 - cidr.prefixLength);
  return address >= cidr.network && address < cidr.network + size;
}

/** `02:42:` followed by the four bytes of `address` (Docker's overlay convention). */
export function macFromIpv4(address: number): string {
  return macFromIp({ family: 4, value: BigInt(address >>> 0) });
}
