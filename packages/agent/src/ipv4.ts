/** The little IPv4 arithmetic the agent needs: the data plane's, plus host-local egress addresses. */

import { formatIpv4, parseCidr } from '@kvnet/dataplane';

export { cidrContains, formatIpv4, parseCidr, parseIpv4, type Ipv4Cidr as Cidr } from '@kvnet/dataplane';

/**
 * The lowest host address of `subnet` (a CIDR, e.g. 172.18.0.0/16) that is not the network,
 * broadcast or `gateway` address and not in `used` (bare IPs); `ip/len`, or undefined when full.
 */
export function lowestFreeAddress(subnet: string, gateway: string, used: ReadonlySet<string>): string | undefined {
  const cidr = parseCidr(subnet);
  if (!cidr) return undefined;
  const size = 2 ** (32 - cidr.prefixLength);
  for (let n = cidr.network + 1; n < cidr.network + size - 1; n++) {
    const ip = formatIpv4(n);
    if (ip === gateway || used.has(ip)) continue;
    return `${ip}/${cidr.prefixLength}`;
  }
  return undefined;
}
