/**
 * Pools as values: validating a pool request into a normalised one, building the stored record,
 * and the geometry the allocator works with (ordinals, shards, reserved addresses).
 */

import { encodeSegment } from '@kvnet/store';
import {
  cidrContains,
  cidrContainsIp,
  cidrLast,
  cidrSize,
  familyBits,
  firstUsableOrdinal,
  formatCidr,
  formatIp,
  parseCidr,
  parseIp,
  structuralReserved,
  type Cidr,
  type Family,
  type IpAddress,
} from '@kvnet/netaddr';
import { SHARD_ADDRESSES } from './address-bitmap.ts';
import { InvalidRequestError } from './errors.ts';
import { RECORD_VERSION, type PoolRecord } from './layout.ts';
import type { SearchSpace } from './serial-search.ts';
import { DEFAULT_ADDRESS_SPACE, IPV6_MAX_SUBNET_PREFIX, type PoolRequest } from './types.ts';

/** Longest store key segment (`@kvnet/store` keys.ts): owner and network ids become one segment. */
const MAX_SEGMENT_BYTES = 255;

/** A validated pool request. */
export interface NormalizedPoolRequest {
  readonly owner: string;
  readonly addressSpace: string;
  readonly family: Family;
  readonly subnet?: Cidr;
  readonly ipRange?: Cidr;
  /** Bare IP. */
  readonly gateway?: string;
  /** name → bare IP, canonical. */
  readonly auxAddresses: Record<string, string>;
}

export function requireId(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidRequestError(field, value, 'must be a non-empty string');
  if (Buffer.byteLength(encodeSegment(value)) > MAX_SEGMENT_BYTES) {
    throw new InvalidRequestError(field, value.length > 40 ? value.slice(0, 40) + '…' : value, `is too long (at most ${MAX_SEGMENT_BYTES} bytes once encoded as a store key)`);
  }
  return value;
}

function cidrField(field: string, value: unknown): Cidr {
  if (typeof value !== 'string') throw new InvalidRequestError(field, value, 'must be a CIDR string like 10.1.0.0/24');
  const r = parseCidr(value);
  if (!r.ok) throw new InvalidRequestError(field, value, r.reason);
  return r.cidr;
}

/**
 * Parses an address given as a bare IP or `ip/len` (then `len` must be the pool's prefix length,
 * when `prefix` is given).
 */
export function parseAddressField(field: string, value: unknown, prefix?: number): IpAddress {
  if (typeof value !== 'string') throw new InvalidRequestError(field, value, 'must be an IP address string');
  const slash = value.indexOf('/');
  const ip = parseIp(slash === -1 ? value : value.slice(0, slash));
  if (!ip) throw new InvalidRequestError(field, value, 'is not an IPv4 or IPv6 address');
  if (slash !== -1) {
    const len = value.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(len) || Number(len) > familyBits(ip.family)) {
      throw new InvalidRequestError(field, value, `prefix length "${len}" is not valid`);
    }
    if (prefix !== undefined && Number(len) !== prefix) {
      throw new InvalidRequestError(field, value, `prefix length ${len} differs from the pool's /${prefix}`);
    }
  }
  return ip;
}

/** Throws unless `ip` is an address of `subnet` that may be reserved (not its network or broadcast address). */
function hostOf(field: string, value: string, ip: IpAddress, subnet: Cidr): void {
  if (!cidrContainsIp(subnet, ip)) throw new InvalidRequestError(field, value, `is not inside subnet ${formatCidr(subnet)}`);
  const s = structuralReserved(subnet);
  const ord = ip.value - subnet.base;
  if (s.network === ord) throw new InvalidRequestError(field, value, `is the network address of ${formatCidr(subnet)}`);
  if (s.broadcast === ord) throw new InvalidRequestError(field, value, `is the broadcast address of ${formatCidr(subnet)}`);
}

export function normalizePoolRequest(req: PoolRequest): NormalizedPoolRequest {
  if (typeof req !== 'object' || req === null) throw new InvalidRequestError('request', req, 'must be an object');
  const owner = requireId('owner', req.owner);
  const addressSpace = req.addressSpace === undefined ? DEFAULT_ADDRESS_SPACE : requireId('addressSpace', req.addressSpace);
  if (req.v6 !== undefined && typeof req.v6 !== 'boolean') throw new InvalidRequestError('v6', req.v6, 'must be a boolean');
  if (req.subnet === undefined || req.subnet === '') {
    for (const field of ['ipRange', 'gateway'] as const) {
      if (req[field] !== undefined && req[field] !== '') {
        throw new InvalidRequestError(field, req[field], 'needs a subnet to be given as well');
      }
    }
    if (req.auxAddresses && Object.keys(req.auxAddresses).length > 0) {
      throw new InvalidRequestError('auxAddresses', req.auxAddresses, 'need a subnet to be given as well');
    }
    return { owner, addressSpace, family: req.v6 ? 6 : 4, auxAddresses: {} };
  }
  const subnet = cidrField('subnet', req.subnet);
  if (req.v6 === true && subnet.family !== 6) throw new InvalidRequestError('subnet', req.subnet, 'is IPv4 but an IPv6 pool (v6) was requested');
  if (req.v6 === false && subnet.family !== 4) throw new InvalidRequestError('subnet', req.subnet, 'is IPv6 but v6 is false');
  let ipRange: Cidr | undefined;
  if (req.ipRange !== undefined && req.ipRange !== '') {
    ipRange = cidrField('ipRange', req.ipRange);
    if (!cidrContains(subnet, ipRange)) throw new InvalidRequestError('ipRange', req.ipRange, `is not inside subnet ${formatCidr(subnet)}`);
  }
  if (subnet.family === 6 && subnet.prefix < IPV6_MAX_SUBNET_PREFIX && (!ipRange || ipRange.prefix < IPV6_MAX_SUBNET_PREFIX)) {
    throw ipRange
      ? new InvalidRequestError('ipRange', req.ipRange, `is larger than /${IPV6_MAX_SUBNET_PREFIX}: dynamic IPv6 addresses come from a /${IPV6_MAX_SUBNET_PREFIX} or smaller range`)
      : new InvalidRequestError(
          'subnet',
          req.subnet,
          `is larger than /${IPV6_MAX_SUBNET_PREFIX}: use a /${IPV6_MAX_SUBNET_PREFIX} (or smaller) IPv6 subnet, or bound dynamic addresses with an ip-range of /${IPV6_MAX_SUBNET_PREFIX} or smaller inside it`,
        );
  }
  let gateway: string | undefined;
  if (req.gateway !== undefined && req.gateway !== '') {
    const ip = parseAddressField('gateway', req.gateway, subnet.prefix);
    hostOf('gateway', req.gateway, ip, subnet);
    gateway = formatIp(ip.family, ip.value);
  }
  const auxAddresses: Record<string, string> = {};
  if (req.auxAddresses !== undefined) {
    if (typeof req.auxAddresses !== 'object' || req.auxAddresses === null) {
      throw new InvalidRequestError('auxAddresses', req.auxAddresses, 'must be an object of name → address');
    }
    const seen = new Map<string, string>();
    for (const [name, value] of Object.entries(req.auxAddresses)) {
      const field = `auxAddresses.${name}`;
      if (name === '') throw new InvalidRequestError('auxAddresses', req.auxAddresses, 'an aux address name is empty');
      const ip = parseAddressField(field, value, subnet.prefix);
      hostOf(field, value, ip, subnet);
      const text = formatIp(ip.family, ip.value);
      if (text === gateway) throw new InvalidRequestError(field, value, 'is the gateway address');
      const other = seen.get(text);
      if (other !== undefined) throw new InvalidRequestError(field, value, `is also aux address "${other}"`);
      seen.set(text, name);
      auxAddresses[name] = text;
    }
  }
  return {
    owner,
    addressSpace,
    family: subnet.family,
    subnet,
    ...(ipRange ? { ipRange } : {}),
    ...(gateway !== undefined ? { gateway } : {}),
    auxAddresses,
  };
}

export function buildPoolRecord(req: NormalizedPoolRequest, subnet: Cidr, id: string, auto: boolean): PoolRecord {
  const gatewayIp = req.gateway ?? formatIp(subnet.family, subnet.base + firstUsableOrdinal(subnet));
  return {
    v: RECORD_VERSION,
    id,
    addressSpace: req.addressSpace,
    family: subnet.family,
    subnet: formatCidr(subnet),
    gateway: `${gatewayIp}/${subnet.prefix}`,
    ...(req.ipRange ? { ipRange: formatCidr(req.ipRange) } : {}),
    auxAddresses: { ...req.auxAddresses },
    owner: req.owner,
    auto,
    state: 'active',
  };
}

/** True when an existing record is what `req` would have produced (a retried request). */
export function sameRequest(record: PoolRecord, req: NormalizedPoolRequest): boolean {
  if (req.subnet === undefined) return record.auto && record.family === req.family;
  const want = buildPoolRecord(req, req.subnet, record.id, record.auto);
  return (
    record.subnet === want.subnet &&
    record.gateway === want.gateway &&
    record.ipRange === want.ipRange &&
    JSON.stringify(sortKeys(record.auxAddresses)) === JSON.stringify(sortKeys(want.auxAddresses))
  );
}

function sortKeys(o: Record<string, string>): Array<[string, string]> {
  return Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The geometry of a stored pool: what the allocator needs, derived once per pool. */
export interface PoolGeometry {
  readonly record: PoolRecord;
  readonly cidr: Cidr;
  readonly size: bigint;
  readonly shardSize: number;
  readonly space: SearchSpace;
  /** ordinal → who holds it structurally: `(network)`, `(broadcast)`, `(gateway)`, `(aux:<name>)`. */
  readonly reservedLabels: ReadonlyMap<bigint, string>;
}

export function poolGeometry(record: PoolRecord): PoolGeometry {
  const parsed = parseCidr(record.subnet);
  if (!parsed.ok) throw new InvalidRequestError('subnet', record.subnet, parsed.reason);
  const cidr = parsed.cidr;
  const size = cidrSize(cidr);
  const shardSize = size < BigInt(SHARD_ADDRESSES) ? Number(size) : SHARD_ADDRESSES;
  const labels = new Map<bigint, string>();
  const s = structuralReserved(cidr);
  if (s.network !== undefined) labels.set(s.network, '(network)');
  if (s.broadcast !== undefined) labels.set(s.broadcast, '(broadcast)');
  const gw = parseIp(record.gateway.split('/')[0]!);
  if (gw && cidrContainsIp(cidr, gw)) labels.set(gw.value - cidr.base, '(gateway)');
  for (const [name, ip] of Object.entries(record.auxAddresses)) {
    const a = parseIp(ip);
    if (a && cidrContainsIp(cidr, a)) labels.set(a.value - cidr.base, `(aux:${name})`);
  }
  let lo = 0n;
  let hi = size - 1n;
  if (record.ipRange) {
    const r = parseCidr(record.ipRange);
    if (r.ok) {
      lo = r.cidr.base - cidr.base;
      hi = cidrLast(r.cidr) - cidr.base;
    }
  }
  return { record, cidr, size, shardSize, space: { lo, hi, shardSize, reserved: new Set(labels.keys()) }, reservedLabels: labels };
}

export function ordinalIp(g: PoolGeometry, ordinal: bigint): string {
  return formatIp(g.cidr.family, g.cidr.base + ordinal);
}

/** Ordinal of `ip` in the pool, or undefined when outside it. */
export function ipOrdinal(g: PoolGeometry, ip: IpAddress): bigint | undefined {
  return cidrContainsIp(g.cidr, ip) ? ip.value - g.cidr.base : undefined;
}

/** Sorted, merged `[start, end]` intervals of the given networks. */
export function mergedIntervals(cidrs: readonly Cidr[]): Array<[bigint, bigint]> {
  const sorted = cidrs.map((c): [bigint, bigint] => [c.base, cidrLast(c)]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: Array<[bigint, bigint]> = [];
  for (const iv of sorted) {
    const top = out.at(-1);
    if (top && iv[0] <= top[1] + 1n) {
      if (iv[1] > top[1]) top[1] = iv[1];
    } else out.push([iv[0], iv[1]]);
  }
  return out;
}

/**
 * The first subnet of length `size` inside `base` that overlaps none of `taken` (merged intervals
 * from {@link mergedIntervals}), or undefined. Skips whole taken intervals at once, so a /8 of /24s
 * with thousands of pools costs a binary search per taken interval, not a scan of 65536 candidates.
 */
export function firstFreeSubnet(base: Cidr, size: number, taken: ReadonlyArray<readonly [bigint, bigint]>): Cidr | undefined {
  if (size < base.prefix || size > familyBits(base.family)) return undefined;
  const step = 1n << BigInt(familyBits(base.family) - size);
  const last = cidrLast(base);
  let cand = base.base;
  // index of the first interval whose end >= cand
  let lo = 0;
  let hi = taken.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (taken[mid]![1] < cand) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; cand + step - 1n <= last; ) {
    const iv = taken[i];
    if (!iv || iv[0] > cand + step - 1n) return { family: base.family, base: cand, prefix: size };
    // overlap: jump past this interval, aligned to the step
    const next = iv[1] + 1n;
    cand = base.base + ((next - base.base + step - 1n) / step) * step;
    i++;
    while (i < taken.length && taken[i]![1] < cand) i++;
  }
  return undefined;
}

