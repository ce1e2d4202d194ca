/** The agent's IPv4 address math: re-exported from `@kvnet/netaddr`, the one module for address math. */

export {
  formatIpv4,
  ipv4CidrContains as cidrContains,
  lowestFreeAddress,
  parseIpv4,
  parseIpv4Cidr as parseCidr,
  type Ipv4Cidr as Cidr,
} from '@kvnet/netaddr';
