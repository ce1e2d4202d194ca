/**
 * The pool table: one key per pool under `ipam/pool-table/pools/`, plus `ipam/pool-table/version`,
 * which every pool creation and deletion rewrites with compare-and-swap in the same transaction.
 * A request lists the table (version and pools from one consistent listing), decides, and commits
 * only if the version is unchanged, so two overlapping pools can never both be created.
 */

import { randomBytes } from 'node:crypto';
import type { KVStore, Revision, TxnOp } from '@kvnet/store';
import type { Logger } from 'pino';
import { cidrOverlaps, formatCidr, formatIp, parseCidr, type Cidr } from '@kvnet/netaddr';
import { casLoop, type Attempt } from './cas-loop.ts';
import { InvalidRequestError, PoolExhaustedError, PoolOverlapError, PoolOwnerMismatchError } from './errors.ts';
import {
  POOL_TABLE,
  POOL_TABLE_POOLS,
  POOL_TABLE_ULA6,
  POOL_TABLE_VERSION,
  decodeRecord,
  encode,
  keys,
  validPool,
  validUla,
  validVersion,
  type PoolRecord,
  type UlaRecord,
  type VersionRecord,
} from './layout.ts';
import { buildPoolRecord, firstFreeSubnet, mergedIntervals, normalizePoolRequest, requireId, sameRequest } from './pool.ts';
import { DEFAULT_POOL6_SIZE, IPV6_MAX_SUBNET_PREFIX, type PoolInfo, type PoolRequest } from './types.ts';

/** RFC 4193 local IPv6 addresses: fd00::/8 plus a 40-bit random global id make one site /48. */
const ULA_GLOBAL_ID_BYTES = 5;
const ULA_SITE_PREFIX = 48;
/** Longest default IPv6 pool prefix: room for the network (anycast) address, a gateway and one more. */
const POOL6_MAX_SIZE = 126;

/** A default pool: `base` cut into subnets of prefix length `size`. */
export interface DefaultPool {
  readonly base: Cidr;
  readonly size: number;
}

export interface PoolTableContext {
  readonly store: KVStore;
  readonly log: Logger;
  readonly maxAttempts: number;
  readonly defaultPools: readonly DefaultPool[];
  /** Configured default IPv6 pools; undefined: the cluster's ULA /48 in /64s. */
  readonly defaultPools6?: readonly DefaultPool[];
  onRetry(): void;
}

interface Table {
  version?: { n: number; rev: Revision };
  /** The cluster's default IPv6 base, once a default IPv6 pool was taken. */
  ula6?: Cidr;
  pools: Array<{ record: PoolRecord; rev: Revision }>;
}

export function toPoolInfo(r: PoolRecord): PoolInfo {
  return {
    id: r.id,
    addressSpace: r.addressSpace,
    family: r.family,
    subnet: r.subnet,
    gateway: r.gateway,
    ...(r.ipRange ? { ipRange: r.ipRange } : {}),
    auxAddresses: { ...r.auxAddresses },
    owner: r.owner,
    ...(r.state === 'releasing' ? { releasing: true } : {}),
  };
}

/**
 * Validates `defaultPools` (family 4) or `defaultPools6` (family 6) options into CIDRs. IPv6 sizes are
 * /64 … /126: a default pool is a network's subnet, and IPv6 subnets larger than /64 are refused.
 */
export function parseDefaultPools(pools: ReadonlyArray<{ base: string; size: number }>, family: 4 | 6 = 4): DefaultPool[] {
  const option = family === 4 ? 'defaultPools' : 'defaultPools6';
  return pools.map((p, i) => {
    const field = `${option}[${i}].base`;
    const r = parseCidr(p.base);
    if (!r.ok) throw new InvalidRequestError(field, p.base, r.reason);
    if (r.cidr.family !== family) throw new InvalidRequestError(field, p.base, family === 4 ? 'defaultPools are IPv4 (IPv6 ones go in defaultPools6)' : 'defaultPools6 are IPv6');
    const min = family === 4 ? r.cidr.prefix : Math.max(r.cidr.prefix, IPV6_MAX_SUBNET_PREFIX);
    const max = family === 4 ? 32 : POOL6_MAX_SIZE;
    if (!Number.isInteger(p.size) || p.size < min || p.size > max) {
      throw new InvalidRequestError(`${option}[${i}].size`, p.size, `must be an integer between ${min} and ${max}`);
    }
    return { base: r.cidr, size: p.size };
  });
}

/** A fresh RFC 4193 site prefix: fd00::/8 and 40 random bits, a /48. */
export function randomUla48(): Cidr {
  let value = 0xfdn;
  for (const b of randomBytes(ULA_GLOBAL_ID_BYTES)) value = (value << 8n) | BigInt(b);
  return { family: 6, base: value << BigInt(128 - ULA_SITE_PREFIX), prefix: ULA_SITE_PREFIX };
}

/** `10.0.1.0-24-3fa9c21e07b4`: readable, unique per request, a valid store key segment. */
export function makePoolId(subnet: Cidr): string {
  return `${formatIp(subnet.family, subnet.base)}-${subnet.prefix}-${randomBytes(6).toString('hex')}`;
}

export class PoolTable {
  constructor(private readonly ctx: PoolTableContext) {}

  private async read(): Promise<Table> {
    const listing = await this.ctx.store.list(POOL_TABLE);
    const table: Table = { pools: [] };
    const poolPrefix = POOL_TABLE_POOLS + '/';
    for (const e of listing.entries) {
      if (e.key === POOL_TABLE_VERSION) {
        table.version = { n: decodeRecord<VersionRecord>(e, validVersion).n, rev: e.revision };
      } else if (e.key === POOL_TABLE_ULA6) {
        const text = decodeRecord<UlaRecord>(e, validUla).b;
        const r = parseCidr(text);
        if (!r.ok || r.cidr.family !== 6 || r.cidr.prefix !== ULA_SITE_PREFIX) throw new InvalidRequestError(POOL_TABLE_ULA6, text, 'is not an IPv6 /48');
        table.ula6 = r.cidr;
      } else if (e.key.startsWith(poolPrefix)) {
        table.pools.push({ record: decodeRecord<PoolRecord>(e, validPool), rev: e.revision });
      }
    }
    return table;
  }

  private versionOp(table: Table): TxnOp {
    const next: VersionRecord = { n: (table.version?.n ?? 0) + 1 };
    return {
      op: 'put',
      key: POOL_TABLE_VERSION,
      value: encode(next),
      if: table.version ? { revision: table.version.rev } : { absent: true },
    };
  }

  async request(req: PoolRequest): Promise<PoolInfo> {
    const norm = normalizePoolRequest(req);
    const what = norm.subnet ? `pool ${req.subnet}` : 'a default pool';
    return casLoop(`request ${what} for network ${norm.owner}`, { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() }, async (): Promise<Attempt<PoolInfo>> => {
      const table = await this.read();
      const space = table.pools.filter((p) => p.record.addressSpace === norm.addressSpace);
      // a retry of a request that already committed: the owner's pool for the same subnet (or its default pool)
      const mine = space.find(
        (p) =>
          p.record.owner === norm.owner &&
          p.record.family === norm.family &&
          p.record.state === 'active' &&
          (norm.subnet ? p.record.subnet === `${formatIp(norm.subnet.family, norm.subnet.base)}/${norm.subnet.prefix}` : p.record.auto),
      );
      if (mine && sameRequest(mine.record, norm)) return { done: toPoolInfo(mine.record) };
      let subnet: Cidr;
      let newUla: Cidr | undefined;
      if (norm.subnet) {
        subnet = norm.subnet;
        for (const p of space) {
          const c = parseCidr(p.record.subnet);
          if (c.ok && cidrOverlaps(c.cidr, subnet)) {
            throw new PoolOverlapError(req.subnet!, norm.addressSpace, p.record.subnet, p.record.owner, p.record.id);
          }
        }
      } else {
        const taken = mergedIntervals(
          space.flatMap((p) => {
            const c = parseCidr(p.record.subnet);
            return c.ok && c.cidr.family === norm.family ? [c.cidr] : [];
          }),
        );
        const defaults = this.defaultsFor(norm.family, table);
        let found: Cidr | undefined;
        for (const d of defaults.pools) {
          found = firstFreeSubnet(d.base, d.size, taken);
          if (found) break;
        }
        if (!found) {
          const bases = defaults.pools.map((d) => `${formatCidr(d.base)} (/${d.size}s)`).join(', ');
          throw new PoolExhaustedError(bases, undefined, `non-overlapping subnet in address space ${norm.addressSpace} among the default ${norm.family === 6 ? 'IPv6 ' : ''}pools`);
        }
        subnet = found;
        newUla = defaults.newUla;
      }
      const record = buildPoolRecord(norm, subnet, makePoolId(subnet), norm.subnet === undefined);
      const ops: TxnOp[] = [this.versionOp(table), { op: 'put', key: keys.pool(record.id), value: encode(record), if: { absent: true } }];
      // The cluster's ULA is recorded with the first pool taken from it; the version check makes it one.
      if (newUla) ops.push({ op: 'put', key: POOL_TABLE_ULA6, value: encode({ b: formatCidr(newUla) } satisfies UlaRecord), if: { absent: true } });
      const result = await this.ctx.store.txn(ops);
      if (!result.ok) return 'retry';
      this.ctx.log.info({ nid: norm.owner, pool: record.id, subnet: record.subnet, addressSpace: record.addressSpace }, 'pool created');
      return { done: toPoolInfo(record) };
    });
  }

  /** The default pools of a family; for IPv6 without configured ones, the cluster's ULA (a new one if none yet). */
  private defaultsFor(family: 4 | 6, table: Table): { pools: readonly DefaultPool[]; newUla?: Cidr } {
    if (family === 4) return { pools: this.ctx.defaultPools };
    if (this.ctx.defaultPools6) return { pools: this.ctx.defaultPools6 };
    if (table.ula6) return { pools: [{ base: table.ula6, size: DEFAULT_POOL6_SIZE }] };
    const ula = randomUla48();
    return { pools: [{ base: ula, size: DEFAULT_POOL6_SIZE }], newUla: ula };
  }

  async get(poolId: string): Promise<PoolInfo | undefined> {
    if (typeof poolId !== 'string' || !/^[A-Za-z0-9._:@+=,-]{1,255}$/.test(poolId) || poolId === '.' || poolId === '..') return undefined;
    const entry = await this.ctx.store.get(keys.pool(poolId));
    return entry ? toPoolInfo(decodeRecord<PoolRecord>(entry, validPool)) : undefined;
  }

  async list(addressSpace?: string): Promise<PoolInfo[]> {
    const table = await this.read();
    return table.pools
      .filter((p) => addressSpace === undefined || p.record.addressSpace === addressSpace)
      .map((p) => toPoolInfo(p.record));
  }

  /**
   * Releases a pool in three steps, each safe to repeat: mark it `releasing` (every allocation
   * transaction checks the pool record's revision, so none can commit after this), delete its address
   * keys in batches of the backend's maxTxnOps, then delete the record and bump the table version.
   */
  async release(poolId: string, owner: string, deleteAddresses: () => Promise<void>): Promise<void> {
    requireId('owner', owner);
    if (typeof poolId !== 'string' || !/^[A-Za-z0-9._:@+=,-]{1,255}$/.test(poolId) || poolId === '.' || poolId === '..') return;
    const store = this.ctx.store;
    const loopOpts = { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() };
    const marked = await casLoop(`mark pool ${poolId} releasing`, loopOpts, async (): Promise<Attempt<boolean>> => {
      const entry = await store.get(keys.pool(poolId));
      if (!entry) return { done: false };
      const record = decodeRecord<PoolRecord>(entry, validPool);
      if (record.owner !== owner) throw new PoolOwnerMismatchError(poolId, owner, record.owner);
      if (record.state === 'releasing') return { done: true };
      const r = await store.putIf(entry.key, encode({ ...record, state: 'releasing' } satisfies PoolRecord), { revision: entry.revision });
      return r.ok ? { done: true } : 'retry';
    });
    if (!marked) return;
    await deleteAddresses();
    await casLoop(`delete pool ${poolId}`, loopOpts, async (): Promise<Attempt<void>> => {
      const [version, entry] = await Promise.all([store.get(POOL_TABLE_VERSION), store.get(keys.pool(poolId))]);
      if (!entry) return { done: undefined };
      const table: Table = {
        pools: [],
        ...(version ? { version: { n: decodeRecord<VersionRecord>(version, validVersion).n, rev: version.revision } } : {}),
      };
      const r = await store.txn([this.versionOp(table), { op: 'delete', key: entry.key, if: { revision: entry.revision } }]);
      if (!r.ok) return 'retry';
      this.ctx.log.info({ nid: owner, pool: poolId, subnet: decodeRecord<PoolRecord>(entry, validPool).subnet }, 'pool released');
      return { done: undefined };
    });
  }
}
