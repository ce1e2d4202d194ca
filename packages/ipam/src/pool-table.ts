/**
 * The pool table: one key per pool under `ipam/pool-table/pools/`, plus `ipam/pool-table/version`,
 * which every pool creation and deletion rewrites with compare-and-swap in the same transaction.
 * A request lists the table (version and pools from one consistent listing), decides, and commits
 * only if the version is unchanged, so two overlapping pools can never both be created.
 */

import { randomBytes } from 'node:crypto';
import type { KVStore, Revision, TxnOp } from '@kvnet/store';
import type { Logger } from 'pino';
import { cidrOverlaps, formatIp, parseCidr, type Cidr } from '@kvnet/netaddr';
import { casLoop, type Attempt } from './cas-loop.ts';
import { InvalidRequestError, PoolExhaustedError, PoolOverlapError, PoolOwnerMismatchError } from './errors.ts';
import {
  POOL_TABLE,
  POOL_TABLE_POOLS,
  POOL_TABLE_VERSION,
  decodeRecord,
  encode,
  keys,
  validPool,
  validVersion,
  type PoolRecord,
  type VersionRecord,
} from './layout.ts';
import { buildPoolRecord, firstFreeSubnet, mergedIntervals, normalizePoolRequest, requireId, sameRequest } from './pool.ts';
import type { PoolInfo, PoolRequest } from './types.ts';

export interface PoolTableContext {
  readonly store: KVStore;
  readonly log: Logger;
  readonly maxAttempts: number;
  readonly defaultPools: ReadonlyArray<{ readonly base: Cidr; readonly size: number }>;
  onRetry(): void;
}

interface Table {
  version?: { n: number; rev: Revision };
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

/** Validates `defaultPools` options into CIDRs (IPv4 only). */
export function parseDefaultPools(pools: ReadonlyArray<{ base: string; size: number }>): Array<{ base: Cidr; size: number }> {
  return pools.map((p, i) => {
    const field = `defaultPools[${i}].base`;
    const r = parseCidr(p.base);
    if (!r.ok) throw new InvalidRequestError(field, p.base, r.reason);
    if (r.cidr.family !== 4) throw new InvalidRequestError(field, p.base, 'default pools are IPv4 only');
    if (!Number.isInteger(p.size) || p.size < r.cidr.prefix || p.size > 32) {
      throw new InvalidRequestError(`defaultPools[${i}].size`, p.size, `must be an integer between ${r.cidr.prefix} and 32`);
    }
    return { base: r.cidr, size: p.size };
  });
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
            return c.ok && c.cidr.family === 4 ? [c.cidr] : [];
          }),
        );
        let found: Cidr | undefined;
        for (const d of this.ctx.defaultPools) {
          found = firstFreeSubnet(d.base, d.size, taken);
          if (found) break;
        }
        if (!found) {
          const bases = this.ctx.defaultPools.map((d) => `${formatIp(4, d.base.base)}/${d.base.prefix} (/${d.size}s)`).join(', ');
          throw new PoolExhaustedError(bases, undefined, `non-overlapping subnet in address space ${norm.addressSpace} among the default pools`);
        }
        subnet = found;
      }
      const record = buildPoolRecord(norm, subnet, makePoolId(subnet), norm.subnet === undefined);
      const result = await this.ctx.store.txn([this.versionOp(table), { op: 'put', key: keys.pool(record.id), value: encode(record), if: { absent: true } }]);
      if (!result.ok) return 'retry';
      this.ctx.log.info({ nid: norm.owner, pool: record.id, subnet: record.subnet, addressSpace: record.addressSpace }, 'pool created');
      return { done: toPoolInfo(record) };
    });
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
