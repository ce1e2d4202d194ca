/** The little IPv4 arithmetic the agent needs for input checks and host-local egress addresses. */

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function parseIpv4(text: string): number | undefined {
  if (!IPV4.test(text)) return undefined;
  return text.split('.').reduce((acc, part) => acc * 256 + Number(part), 0);
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Cidr {
  readonly address: number;
  readonly prefixLength: number;
  readonly network: number;
  readonly size: number;
}

export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const address = parseIpv4(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (address === undefined || !/^\d{1,2}$/.test(lenText)) return undefined;
  const prefixLength = Number(lenText);
  if (prefixLength > 32) return undefined;
  const size = 2 ** (32 - prefixLength);
  return { address, prefixLength, size, network: address - (address % size) };
}

export function cidrContains(cidr: Cidr, ip: number): boolean {
  return ip >= cidr.network && ip < cidr.network + cidr.size;
}

/**
 * The lowest host address of `subnet` (a CIDR, e.g. 172.18.0.0/16) that is not the network,
 * broadcast or `gateway` address and not in `used` (bare IPs); `ip/len`, or undefined when full.
 */
export function lowestFreeAddress(subnet: string, gateway: string, used: ReadonlySet<string>): string | undefined {
  const cidr = parseCidr(subnet);
  if (!cidr) return undefined;
  for (let n = cidr.network + 1; n < cidr.network + cidr.size - 1; n++) {
    const ip = formatIpv4(n);
    if (ip === gateway || used.has(ip)) continue;
    return `${ip}/${cidr.prefixLength}`;
  }
  return undefined;
}
