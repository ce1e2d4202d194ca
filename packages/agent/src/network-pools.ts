/**
 * Pure: which IPAM pools a new network asks for, from what the user gave — the way `docker network
 * create` takes them: `--subnet` (repeatable, one per family), `--gateway`, `--ip-range` and
 * `--aux-address` each belonging to the subnet that contains it, `--ipv6` for an IPv6 pool (the
 * cluster's default /64 when no IPv6 subnet is given), `--ipv4=false` (here `ipv4: false`) for none.
 *
 * The family rule: a network is IPv4 unless told otherwise; an IPv6 subnet (or `ipv6: true`) adds an
 * IPv6 pool; a network whose only subnets are IPv6 ones is IPv6-only (Docker would add a default IPv4
 * pool; `ipv4: true` asks for that). At most one subnet per family: the data plane gives every subnet
 * of a network one L2 segment, and the records keep one pool per family.
 *
 * Every refusal is an InvalidInputError naming the field and the value, raised before anything is
 * allocated, so a bad request stores nothing.
 */

import { cidrContainsIp, parseIp, parseInterfaceAddress, type Cidr, type Family } from '@kvnet/netaddr';
import { InvalidInputError } from './errors.ts';

/** What the user asked for (the local API's fields; single values or lists). */
export interface NetworkPoolInput {
  readonly subnet?: string | readonly string[];
  readonly gateway?: string | readonly string[];
  readonly ipRange?: string | readonly string[];
  /** name → address, of either family. */
  readonly auxAddresses?: Record<string, string>;
  /** true: an IPv6 pool too (default /64 when no IPv6 subnet is given); false: refuse IPv6 subnets. */
  readonly ipv6?: boolean;
  /** false: no IPv4 pool (an IPv6-only network); true: an IPv4 pool even when only IPv6 subnets are given. */
  readonly ipv4?: boolean;
}

/** One pool to request: the subnet (omitted: a default pool of the family) and what lies in it. */
export interface PoolShape {
  readonly subnet?: string;
  readonly gateway?: string;
  readonly ipRange?: string;
  readonly auxAddresses?: Record<string, string>;
}

/** The pools of a new network: IPv4, IPv6, or both. */
export interface PoolPlan {
  readonly v4?: PoolShape;
  readonly v6?: PoolShape;
}

const asList = (v: string | readonly string[] | undefined): readonly string[] => (v === undefined ? [] : typeof v === 'string' ? [v] : v);
const familyName = (f: Family): string => `IPv${f}`;

/** Plans the pools of a new network; throws InvalidInputError naming the first bad field and value. */
export function planNetworkPools(input: NetworkPoolInput): PoolPlan {
  const subnets = new Map<Family, { text: string; cidr: Cidr }>();
  for (const text of asList(input.subnet)) {
    const a = parseInterfaceAddress(text);
    if (!a) throw new InvalidInputError(`invalid subnet "${text}": is not an IPv4 or IPv6 CIDR (e.g. 10.0.1.0/24, fd00:1::/64)`);
    const family = a.network.family;
    const had = subnets.get(family);
    if (had) {
      throw new InvalidInputError(`invalid subnet "${text}": the network already has ${familyName(family)} subnet ${had.text}; a kvnet network has at most one IPv4 and one IPv6 subnet`);
    }
    if (family === 6 && input.ipv6 === false) throw new InvalidInputError(`invalid subnet "${text}": is IPv6, but ipv6 is false`);
    if (family === 4 && input.ipv4 === false) throw new InvalidInputError(`invalid subnet "${text}": is IPv4, but ipv4 is false`);
    subnets.set(family, { text, cidr: a.network });
  }
  const listed = [...subnets.values()].map((s) => s.text).join(', ');
  const ownerOf = (field: string, value: string, ip: string): Family => {
    const parsed = parseIp(ip);
    if (!parsed) throw new InvalidInputError(`invalid ${field} "${value}": is not an IPv4 or IPv6 address`);
    if (subnets.size === 0) throw new InvalidInputError(`invalid ${field} "${value}": needs a subnet (--subnet) to lie in`);
    const s = subnets.get(parsed.family);
    if (!s || !cidrContainsIp(s.cidr, parsed)) throw new InvalidInputError(`invalid ${field} "${value}": is not inside any subnet of the network (${listed})`);
    return parsed.family;
  };

  const gateways = new Map<Family, string>();
  for (const g of asList(input.gateway)) {
    const family = ownerOf('gateway', g, g);
    if (gateways.has(family)) throw new InvalidInputError(`invalid gateway "${g}": subnet ${subnets.get(family)!.text} already has gateway ${gateways.get(family)}`);
    gateways.set(family, g);
  }
  const ranges = new Map<Family, string>();
  for (const r of asList(input.ipRange)) {
    const a = parseInterfaceAddress(r);
    if (!a) throw new InvalidInputError(`invalid ipRange "${r}": is not an IPv4 or IPv6 CIDR`);
    const family = ownerOf('ipRange', r, r.slice(0, r.indexOf('/')));
    if (ranges.has(family)) throw new InvalidInputError(`invalid ipRange "${r}": subnet ${subnets.get(family)!.text} already has ip range ${ranges.get(family)}`);
    ranges.set(family, r);
  }
  const aux = new Map<Family, Record<string, string>>();
  for (const [name, ip] of Object.entries(input.auxAddresses ?? {})) {
    const family = ownerOf(`auxAddresses.${name}`, ip, ip);
    aux.set(family, { ...aux.get(family), [name]: ip });
  }

  const wantV6 = input.ipv6 === true || subnets.has(6);
  const wantV4 = input.ipv4 ?? (subnets.has(4) || !subnets.has(6));
  if (!wantV4 && !wantV6) throw new InvalidInputError('invalid ipv4 false: a network needs IPv4 or IPv6 (give an IPv6 --subnet or --ipv6)');
  const shape = (f: Family): PoolShape => ({
    ...(subnets.has(f) ? { subnet: subnets.get(f)!.text } : {}),
    ...(gateways.has(f) ? { gateway: gateways.get(f)! } : {}),
    ...(ranges.has(f) ? { ipRange: ranges.get(f)! } : {}),
    ...(aux.has(f) ? { auxAddresses: aux.get(f)! } : {}),
  });
  return { ...(wantV4 ? { v4: shape(4) } : {}), ...(wantV6 ? { v6: shape(6) } : {}) };
}
