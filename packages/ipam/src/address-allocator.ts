/**
 * Addresses inside one pool, on the sharded layout of `layout.ts`: dynamic allocation (serial,
 * batched per process), specific addresses, release by address and owner, listing and a consistency
 * check. Every change is one store transaction that also checks the pool record's revision, so
 * nothing is written into a pool that is being released.
 */

import type { KVEntry, KVStore, Revision, TxnOp } from '@kvnet/store';
import type { Logger } from 'pino';
import { parseIp } from '@kvnet/netaddr';
import { AddressBitmap } from './address-bitmap.ts';
import { casLoop, type Attempt } from './cas-loop.ts';
import { AddressInUseError, InvalidRequestError, PoolExhaustedError, PoolNotFoundError } from './errors.ts';
import {
  decodeRecord,
  encode,
  keys,
  validCursor,
  validIp,
  validOwner,
  validPool,
  validShard,
  type CursorRecord,
  type IpRecord,
  type OwnerRecord,
  type PoolRecord,
  type ShardRecord,
} from './layout.ts';
import { ipOrdinal, ordinalIp, parseAddressField, poolGeometry, requireId, type PoolGeometry } from './pool.ts';
import { serialSearch, shardOf, type ShardView } from './serial-search.ts';
import type { AddressAllocation } from './types.ts';

/** Most dynamic allocations committed in one transaction (also bounded by the backend's maxTxnOps). */
export const MAX_BATCH = 32;
/** Most shards ahead of the cursor that allocators spread over after losing races (see pickLane). */
export const MAX_LANES = 16;
/** Ops of an allocation transaction besides the two per address: pool check, up to two shards, cursor. */
const FIXED_TXN_OPS = 4;

export interface AllocatorContext {
  readonly store: KVStore;
  readonly log: Logger;
  readonly maxAttempts: number;
  onRetry(): void;
  onAllocated(n: number): void;
}

interface ShardState {
  bm: AddressBitmap;
  /** Offset of the last dynamic allocation in this shard. */
  last?: number;
  /** undefined: the key does not exist. */
  rev?: Revision;
}

/** What a process knows about a pool's allocation state; a cache, verified by every transaction. */
interface PoolState {
  geometry: PoolGeometry;
  poolRev: Revision;
  cursorShard: bigint;
  shards: Map<bigint, ShardState>;
  /** Every shard key is in `shards` (from a listing). */
  complete: boolean;
  /** Read from the store in this attempt (not from the cache). */
  fresh: boolean;
}

interface Waiter {
  owner: string;
  resolve(a: AddressAllocation): void;
  reject(err: unknown): void;
}

interface Queue {
  waiting: Waiter[];
  running: boolean;
}

interface ReleaseWaiter {
  g: PoolGeometry;
  ipText: string;
  ordinal: bigint;
  owner: string;
  resolve(released: boolean): void;
  reject(err: unknown): void;
}

interface ReleaseQueue {
  waiting: ReleaseWaiter[];
  running: boolean;
}

export class AddressAllocator {
  private readonly cache = new Map<string, PoolState>();
  private readonly queues = new Map<string, Queue>();
  private readonly releases = new Map<string, ReleaseQueue>();
  private readonly geometries = new Map<string, PoolGeometry>();
  /** Last known cursor shard per pool; survives cache invalidation so a fresh read needs one round trip. */
  private readonly cursorHints = new Map<string, bigint>();

  constructor(private readonly ctx: AllocatorContext) {}

  /** Forget what is cached about a pool (after any write that did not go through the dynamic path). */
  invalidate(poolId: string): void {
    this.cache.delete(poolId);
  }

  // ---------------------------------------------------------------- reading

  private async readPool(poolId: string): Promise<{ record: PoolRecord; rev: Revision }> {
    const entry = await this.ctx.store.get(keys.pool(poolId));
    if (!entry) throw new PoolNotFoundError(poolId);
    const record = decodeRecord<PoolRecord>(entry, validPool);
    if (record.state !== 'active') throw new PoolNotFoundError(poolId);
    return { record, rev: entry.revision };
  }

  private geometryFor(record: PoolRecord): PoolGeometry {
    const cached = this.cache.get(record.id);
    return cached && cached.geometry.record.subnet === record.subnet ? cached.geometry : poolGeometry(record);
  }

  private shardFromEntry(g: PoolGeometry, entry: KVEntry | undefined): ShardState {
    if (!entry) return { bm: new AddressBitmap(g.shardSize) };
    const rec = decodeRecord<ShardRecord>(entry, validShard);
    return { bm: AddressBitmap.decode(rec.b, g.shardSize), ...(rec.l !== undefined ? { last: rec.l } : {}), rev: entry.revision };
  }

  /** Reads the pool, cursor, the cursor's shard and (in parallel) the owner keys of `owners`. */
  private async readState(poolId: string, owners: readonly string[]): Promise<{ state: PoolState; held: Map<string, OwnerRecord> }> {
    const store = this.ctx.store;
    const guess = this.cache.get(poolId)?.cursorShard ?? this.cursorHints.get(poolId);
    const [poolEntry, cursorEntry, guessEntry, ...ownerEntries] = await Promise.all([
      store.get(keys.pool(poolId)),
      store.get(keys.cursor(poolId)),
      guess === undefined ? Promise.resolve(undefined) : store.get(keys.shard(poolId, guess)),
      ...owners.map((o) => store.get(keys.owner(poolId, o))),
    ]);
    if (!poolEntry) throw new PoolNotFoundError(poolId);
    const record = decodeRecord<PoolRecord>(poolEntry, validPool);
    if (record.state !== 'active') throw new PoolNotFoundError(poolId);
    const geometry = this.geometryFor(record);
    const cursorShard = cursorEntry
      ? BigInt(decodeRecord<CursorRecord>(cursorEntry, validCursor).s)
      : shardOf(geometry.space.lo, geometry.shardSize);
    const state: PoolState = {
      geometry,
      poolRev: poolEntry.revision,
      cursorShard,
      shards: new Map(),
      complete: false,
      fresh: true,
    };
    if (guess !== undefined) state.shards.set(guess, this.shardFromEntry(geometry, guessEntry));
    this.cursorHints.set(poolId, cursorShard);
    if (!state.shards.has(cursorShard)) {
      state.shards.set(cursorShard, this.shardFromEntry(geometry, await store.get(keys.shard(poolId, cursorShard))));
    }
    const held = new Map<string, OwnerRecord>();
    owners.forEach((o, i) => {
      const e = ownerEntries[i];
      if (e) {
        const rec = decodeRecord<OwnerRecord>(e, validOwner);
        if (rec.ips.length > 0) held.set(o, rec);
      }
    });
    return { state, held };
  }

  private async fetchShard(poolId: string, state: PoolState, idx: bigint): Promise<void> {
    state.shards.set(idx, this.shardFromEntry(state.geometry, await this.ctx.store.get(keys.shard(poolId, idx))));
  }

  /** Reads every shard key of the pool at once (one listing); shards not listed are empty. */
  private async fetchAllShards(poolId: string, state: PoolState): Promise<void> {
    const listing = await this.ctx.store.list(keys.shards(poolId));
    const prefix = keys.shards(poolId) + '/';
    for (const entry of listing.entries) {
      const idx = BigInt(entry.key.slice(prefix.length));
      state.shards.set(idx, this.shardFromEntry(state.geometry, entry));
    }
    state.complete = true;
  }

  private allocation(g: PoolGeometry, poolId: string, ip: string, owner: string): AddressAllocation {
    return { address: `${ip}/${g.cidr.prefix}`, ip, poolId, owner };
  }

  // ---------------------------------------------------------------- dynamic allocation

  /**
   * The next free address after the last one allocated. Concurrent calls on this instance for the
   * same pool are committed together (one transaction for up to {@link MAX_BATCH} of them).
   */
  allocateDynamic(poolId: string, owner: string): Promise<AddressAllocation> {
    requireId('owner', owner);
    return new Promise((resolve, reject) => {
      let q = this.queues.get(poolId);
      if (!q) {
        q = { waiting: [], running: false };
        this.queues.set(poolId, q);
      }
      q.waiting.push({ owner, resolve, reject });
      if (!q.running) {
        q.running = true;
        // start on the next microtask, so calls made in the same tick share the first transaction
        queueMicrotask(() => void this.drain(poolId, q));
      }
    });
  }

  private async drain(poolId: string, q: Queue): Promise<void> {
    q.running = true;
    try {
      const maxBatch = Math.max(1, Math.min(MAX_BATCH, Math.floor((this.ctx.store.capabilities.maxTxnOps - FIXED_TXN_OPS) / 2)));
      while (q.waiting.length > 0) {
        // one entry per owner; later waiters of the same owner share its result
        const batch = new Map<string, Waiter[]>();
        const rest: Waiter[] = [];
        for (const w of q.waiting) {
          const group = batch.get(w.owner);
          if (group) group.push(w);
          else if (batch.size < maxBatch) batch.set(w.owner, [w]);
          else rest.push(w);
        }
        q.waiting = rest;
        let leftover: Map<string, Waiter[]>;
        try {
          leftover = await this.runBatch(poolId, batch);
        } catch (err) {
          this.invalidate(poolId);
          for (const ws of batch.values()) for (const w of ws) w.reject(err);
          continue;
        }
        q.waiting = [...[...leftover.values()].flat(), ...q.waiting];
      }
    } finally {
      q.running = false;
      if (q.waiting.length === 0) this.queues.delete(poolId);
    }
  }

  /**
   * Allocates for the owners of `batch` (settling their waiters) and returns the owners that did not
   * fit into the transaction.
   */
  private async runBatch(poolId: string, batch: Map<string, Waiter[]>): Promise<Map<string, Waiter[]>> {
    const settle = (owner: string, fn: (w: Waiter) => void): void => {
      for (const w of batch.get(owner) ?? []) fn(w);
      batch.delete(owner);
    };
    let leftover = new Map<string, Waiter[]>();
    await casLoop(`allocate an address in pool ${poolId}`, { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() }, async (n): Promise<Attempt<void>> => {
      let state = n === 0 ? this.cache.get(poolId) : undefined;
      if (state) state.fresh = false;
      if (!state) {
        const read = await this.readState(poolId, [...batch.keys()]);
        state = read.state;
        for (const [owner, rec] of read.held) {
          settle(owner, (w) => w.resolve(this.allocation(state!.geometry, poolId, rec.ips[0]!, owner)));
        }
        if (batch.size === 0) return { done: undefined };
      }
      const lane = n > 0 ? this.pickLane(state, n) : undefined;
      let plan = await this.plan(poolId, state, [...batch.keys()], lane);
      if (plan.exhausted.length > 0 && !(state.fresh && state.complete)) {
        // only a fresh, complete view may declare the pool exhausted
        if (!state.fresh) {
          const read = await this.readState(poolId, [...batch.keys()]);
          state = read.state;
          for (const [owner, rec] of read.held) {
            settle(owner, (w) => w.resolve(this.allocation(state!.geometry, poolId, rec.ips[0]!, owner)));
          }
          if (batch.size === 0) return { done: undefined };
        }
        if (!state.complete) await this.fetchAllShards(poolId, state);
        plan = await this.plan(poolId, state, [...batch.keys()]);
      }
      const g = state.geometry;
      if (plan.assigned.length > 0) {
        const ops: TxnOp[] = [{ op: 'check', key: keys.pool(poolId), if: { revision: state.poolRev } }];
        const shardOps: bigint[] = [];
        for (const [idx, s] of plan.touched) {
          shardOps.push(idx);
          const rec: ShardRecord = { b: s.bm.encode(), ...(s.last !== undefined ? { l: s.last } : {}) };
          ops.push({ op: 'put', key: keys.shard(poolId, idx), value: encode(rec), if: s.rev ? { revision: s.rev } : { absent: true } });
        }
        const cursorMoved = plan.cursorShard !== state.cursorShard;
        if (cursorMoved) {
          const rec: CursorRecord = { s: String(plan.cursorShard) };
          // unconditional: the cursor only guides the search (uniqueness comes from the shard CAS and
          // the create-only address key), and a conditional cursor would be one more hot key
          ops.push({ op: 'put', key: keys.cursor(poolId), value: encode(rec) });
        }
        for (const { owner, ordinal } of plan.assigned) {
          const ip = ordinalIp(g, ordinal);
          const ipRec: IpRecord = { o: owner };
          const ownerRec: OwnerRecord = { o: owner, ips: [ip] };
          ops.push({ op: 'put', key: keys.ip(poolId, ip), value: encode(ipRec), if: { absent: true } });
          ops.push({ op: 'put', key: keys.owner(poolId, owner), value: encode(ownerRec), if: { absent: true } });
        }
        const result = await this.ctx.store.txn(ops);
        if (!result.ok) {
          this.cache.delete(poolId);
          return 'retry';
        }
        // the transaction's new revisions keep the cache exact for the next batch
        shardOps.forEach((idx, i) => {
          const s = plan.touched.get(idx)!;
          state!.shards.set(idx, { ...s, rev: result.revisions[1 + i]! });
        });
        if (cursorMoved) {
          this.cursorHints.set(poolId, plan.cursorShard);
          state.cursorShard = plan.cursorShard;
        }
        this.cache.set(poolId, state);
        this.ctx.onAllocated(plan.assigned.length);
        for (const { owner, ordinal } of plan.assigned) {
          settle(owner, (w) => w.resolve(this.allocation(g, poolId, ordinalIp(g, ordinal), owner)));
        }
      }
      for (const owner of plan.exhausted) {
        settle(owner, (w) => w.reject(new PoolExhaustedError(g.record.subnet, poolId, 'address')));
      }
      leftover = batch;
      return { done: undefined };
    });
    return leftover;
  }

  /**
   * Picks addresses for `owners` in serial order on copies of the cached shards, within one
   * transaction's op budget. Reads shards it needs and has not seen (one get, then a listing).
   */
  /**
   * After a lost race, a shard to search from instead of the cursor's: one of the next
   * min(2^attempt, {@link MAX_LANES}) shards ahead of the cursor (never past the end of the range),
   * chosen at random. Allocators that keep colliding on one shard spread over several, and then stay
   * in their own shard (their cache stays valid) until it is full.
   */
  private pickLane(state: PoolState, attempt: number): bigint | undefined {
    const { space, shardSize } = state.geometry;
    const lastShard = shardOf(space.hi, shardSize);
    const ahead = lastShard - state.cursorShard;
    if (ahead <= 0n) return undefined;
    const spread = BigInt(Math.min(2 ** Math.min(attempt, 10), MAX_LANES));
    const width = ahead + 1n < spread ? ahead + 1n : spread;
    const j = BigInt(Math.floor(Math.random() * Number(width)));
    return j === 0n ? undefined : state.cursorShard + j;
  }

  private async plan(
    poolId: string,
    state: PoolState,
    owners: readonly string[],
    lane?: bigint,
  ): Promise<{ assigned: Array<{ owner: string; ordinal: bigint }>; exhausted: string[]; touched: Map<bigint, ShardState>; cursorShard: bigint }> {
    const g = state.geometry;
    const size = g.shardSize;
    const touched = new Map<bigint, ShardState>();
    const view = (idx: bigint): ShardView => {
      const s = touched.get(idx) ?? state.shards.get(idx);
      if (s) return s.bm;
      return state.complete ? null : undefined;
    };
    const cursor = state.shards.get(state.cursorShard);
    let last = cursor?.last !== undefined ? state.cursorShard * BigInt(size) + BigInt(cursor.last) : undefined;
    if (lane !== undefined) {
      const start = lane * BigInt(size);
      last = start > g.space.lo ? start - 1n : undefined;
    }
    let cursorShard = state.cursorShard;
    const assigned: Array<{ owner: string; ordinal: bigint }> = [];
    const exhausted: string[] = [];
    const budget = this.ctx.store.capabilities.maxTxnOps;
    let fetchedOne = false;
    for (const owner of owners) {
      let r = serialSearch(g.space, last, view);
      while (r.kind === 'need') {
        if (!fetchedOne) {
          fetchedOne = true;
          await this.fetchShard(poolId, state, r.shard);
        } else {
          await this.fetchAllShards(poolId, state);
        }
        r = serialSearch(g.space, last, view);
      }
      if (r.kind === 'exhausted') {
        exhausted.push(owner);
        continue;
      }
      const idx = shardOf(r.ordinal, size);
      const newShard = !touched.has(idx);
      const opsAfter = 1 + touched.size + (newShard ? 1 : 0) + 1 /* cursor */ + 2 * (assigned.length + 1);
      if (opsAfter > budget || (newShard && touched.size >= 2)) break;
      let s = touched.get(idx);
      if (!s) {
        const base = state.shards.get(idx) ?? { bm: new AddressBitmap(size) };
        s = { bm: base.bm.clone(), ...(base.last !== undefined ? { last: base.last } : {}), ...(base.rev ? { rev: base.rev } : {}) };
        touched.set(idx, s);
      }
      const offset = Number(r.ordinal - idx * BigInt(size));
      s.bm.set(offset);
      s.last = offset;
      last = r.ordinal;
      cursorShard = idx;
      assigned.push({ owner, ordinal: r.ordinal });
    }
    return { assigned, exhausted, touched, cursorShard };
  }

  // ---------------------------------------------------------------- specific addresses

  /** Allocates exactly `address` for `owner` (a retry by the same owner returns it again). */
  async allocateSpecific(poolId: string, owner: string, address: string): Promise<AddressAllocation> {
    requireId('owner', owner);
    const store = this.ctx.store;
    try {
      return await casLoop(`allocate address ${address} in pool ${poolId}`, { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() }, async (): Promise<Attempt<AddressAllocation>> => {
        const { record, rev: poolRev } = await this.readPool(poolId);
        const g = this.geometryFor(record);
        const ip = parseAddressField('address', address, g.cidr.prefix);
        const ordinal = ipOrdinal(g, ip);
        if (ordinal === undefined) throw new InvalidRequestError('address', address, `is not inside pool ${record.subnet} (${poolId})`);
        const ipText = ordinalIp(g, ordinal);
        const label = g.reservedLabels.get(ordinal);
        if (label) throw new AddressInUseError(ipText, poolId, label);
        const idx = shardOf(ordinal, g.shardSize);
        const [ipEntry, ownerEntry, shardEntry] = await Promise.all([
          store.get(keys.ip(poolId, ipText)),
          store.get(keys.owner(poolId, owner)),
          store.get(keys.shard(poolId, idx)),
        ]);
        if (ipEntry) {
          const holder = decodeRecord<IpRecord>(ipEntry, validIp).o;
          if (holder === owner) return { done: this.allocation(g, poolId, ipText, owner) };
          throw new AddressInUseError(ipText, poolId, holder);
        }
        const shard = this.shardFromEntry(g, shardEntry);
        const offset = Number(ordinal - idx * BigInt(g.shardSize));
        if (shard.bm.has(offset)) {
          // The three reads above ran in parallel: a winner may have committed (bit + address key in
          // one transaction) between the address read and the shard read. Reading the address key
          // after the shard names the holder; only a really inconsistent store leaves it unknown.
          const after = await store.get(keys.ip(poolId, ipText));
          const holder = after ? decodeRecord<IpRecord>(after, validIp).o : '(unknown: set in the bitmap without an owner record)';
          if (holder === owner) return { done: this.allocation(g, poolId, ipText, owner) };
          throw new AddressInUseError(ipText, poolId, holder);
        }
        shard.bm.set(offset);
        const ownerRec = ownerEntry ? decodeRecord<OwnerRecord>(ownerEntry, validOwner) : undefined;
        const shardRec: ShardRecord = { b: shard.bm.encode(), ...(shard.last !== undefined ? { l: shard.last } : {}) };
        const ops: TxnOp[] = [
          { op: 'check', key: keys.pool(poolId), if: { revision: poolRev } },
          { op: 'put', key: keys.shard(poolId, idx), value: encode(shardRec), if: shard.rev ? { revision: shard.rev } : { absent: true } },
          { op: 'put', key: keys.ip(poolId, ipText), value: encode({ o: owner } satisfies IpRecord), if: { absent: true } },
          {
            op: 'put',
            key: keys.owner(poolId, owner),
            value: encode({ o: owner, ips: [...(ownerRec?.ips ?? []), ipText] } satisfies OwnerRecord),
            if: ownerEntry ? { revision: ownerEntry.revision } : { absent: true },
          },
        ];
        const result = await store.txn(ops);
        if (!result.ok) return 'retry';
        this.ctx.onAllocated(1);
        return { done: this.allocation(g, poolId, ipText, owner) };
      });
    } finally {
      this.invalidate(poolId);
    }
  }

  // ---------------------------------------------------------------- release

  /** The pool's geometry, from the cache (pool records never change their subnet) or the store. */
  private async geometryOf(poolId: string): Promise<PoolGeometry | undefined> {
    const known = this.cache.get(poolId)?.geometry ?? this.geometries.get(poolId);
    if (known) return known;
    const entry = await this.ctx.store.get(keys.pool(poolId));
    if (!entry) return undefined;
    const g = poolGeometry(decodeRecord<PoolRecord>(entry, validPool));
    this.geometries.set(poolId, g);
    return g;
  }

  /**
   * Releases `address` if `owner` holds it; false otherwise. Concurrent releases in one pool on this
   * instance are committed together, like allocations.
   */
  async release(poolId: string, address: string, owner: string): Promise<boolean> {
    requireId('owner', owner);
    const g = await this.geometryOf(poolId);
    if (!g) return false;
    const ip = parseAddressField('address', address, g.cidr.prefix);
    const ordinal = ipOrdinal(g, ip);
    if (ordinal === undefined) return false;
    const ipText = ordinalIp(g, ordinal);
    return new Promise((resolve, reject) => {
      let q = this.releases.get(poolId);
      if (!q) {
        q = { waiting: [], running: false };
        this.releases.set(poolId, q);
      }
      q.waiting.push({ g, ipText, ordinal, owner, resolve, reject });
      if (!q.running) {
        q.running = true;
        queueMicrotask(() => void this.drainReleases(poolId, q));
      }
    });
  }

  private async drainReleases(poolId: string, q: ReleaseQueue): Promise<void> {
    q.running = true;
    try {
      // at most three ops per address: address key, owner record, shard
      const maxBatch = Math.max(1, Math.min(MAX_BATCH, Math.floor(this.ctx.store.capabilities.maxTxnOps / 3)));
      while (q.waiting.length > 0) {
        const batch: ReleaseWaiter[] = [];
        const rest: ReleaseWaiter[] = [];
        const seen = new Set<string>();
        for (const w of q.waiting) {
          // the same address twice in one transaction would touch one key twice: next batch
          if (batch.length < maxBatch && !seen.has(w.ipText)) {
            seen.add(w.ipText);
            batch.push(w);
          } else rest.push(w);
        }
        q.waiting = rest;
        try {
          const results = await this.releaseBatch(poolId, batch);
          batch.forEach((w, i) => w.resolve(results[i]!));
        } catch (err) {
          for (const w of batch) w.reject(err);
        } finally {
          this.invalidate(poolId);
        }
      }
    } finally {
      q.running = false;
      if (q.waiting.length === 0) this.releases.delete(poolId);
    }
  }

  private async releaseBatch(poolId: string, batch: readonly ReleaseWaiter[]): Promise<boolean[]> {
    const store = this.ctx.store;
    const g = batch[0]!.g;
    const what = batch.length === 1 ? `address ${batch[0]!.ipText}` : `${batch.length} addresses`;
    return casLoop(`release ${what} in pool ${poolId}`, { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() }, async (): Promise<Attempt<boolean[]>> => {
      const owners = [...new Set(batch.map((w) => w.owner))];
      const shards = [...new Set(batch.map((w) => shardOf(w.ordinal, g.shardSize)))];
      // An owner record and the address keys it lists are only ever changed together, so the owner
      // record (checked by revision in the transaction) says who holds an address: no need to read
      // the address keys.
      const [ownerEntries, shardEntries] = await Promise.all([
        Promise.all(owners.map((o) => store.get(keys.owner(poolId, o)))),
        Promise.all(shards.map((idx) => store.get(keys.shard(poolId, idx)))),
      ]);
      const holds = new Map<string, Set<string>>();
      owners.forEach((o, i) => {
        const e = ownerEntries[i];
        if (e) holds.set(o, new Set(decodeRecord<OwnerRecord>(e, validOwner).ips));
      });
      const held = batch.map((w) => holds.get(w.owner)?.has(w.ipText) === true);
      if (!held.some(Boolean)) return { done: held };
      const ops: TxnOp[] = [];
      const gone = new Map<string, Set<string>>();
      const cleared = new Map<bigint, number[]>();
      batch.forEach((w, i) => {
        if (!held[i]) return;
        ops.push({ op: 'delete', key: keys.ip(poolId, w.ipText) });
        if (!gone.has(w.owner)) gone.set(w.owner, new Set());
        gone.get(w.owner)!.add(w.ipText);
        const idx = shardOf(w.ordinal, g.shardSize);
        if (!cleared.has(idx)) cleared.set(idx, []);
        cleared.get(idx)!.push(Number(w.ordinal - idx * BigInt(g.shardSize)));
      });
      owners.forEach((owner, i) => {
        const e = ownerEntries[i];
        const drop = gone.get(owner);
        if (!e || !drop) return;
        const ips = decodeRecord<OwnerRecord>(e, validOwner).ips.filter((x) => !drop.has(x));
        ops.push(
          ips.length === 0
            ? { op: 'delete', key: e.key, if: { revision: e.revision } }
            : { op: 'put', key: e.key, value: encode({ o: owner, ips } satisfies OwnerRecord), if: { revision: e.revision } },
        );
      });
      shards.forEach((idx, i) => {
        const e = shardEntries[i];
        const offsets = cleared.get(idx);
        if (!e || !offsets) return;
        const shard = this.shardFromEntry(g, e);
        for (const off of offsets) shard.bm.clear(off);
        const rec: ShardRecord = { b: shard.bm.encode(), ...(shard.last !== undefined ? { l: shard.last } : {}) };
        ops.push({ op: 'put', key: e.key, value: encode(rec), if: { revision: e.revision } });
      });
      const result = await store.txn(ops);
      return result.ok ? { done: held } : 'retry';
    });
  }

  /** Releases every address `owner` holds in the pool; returns them (bare IPs). */
  async releaseOwner(poolId: string, owner: string): Promise<string[]> {
    requireId('owner', owner);
    const entry = await this.ctx.store.get(keys.owner(poolId, owner));
    if (!entry) return [];
    const ips = decodeRecord<OwnerRecord>(entry, validOwner).ips;
    const done = await Promise.all(ips.map((ip) => this.release(poolId, ip, owner)));
    return ips.filter((_, i) => done[i]);
  }

  /** Drops everything known about a pool (it was released). */
  forget(poolId: string): void {
    this.cache.delete(poolId);
    this.geometries.delete(poolId);
    this.cursorHints.delete(poolId);
  }

  // ---------------------------------------------------------------- reading for callers

  async list(poolId: string): Promise<Array<{ address: string; ip: string; owner: string }>> {
    const entry = await this.ctx.store.get(keys.pool(poolId));
    if (!entry) throw new PoolNotFoundError(poolId);
    const g = this.geometryFor(decodeRecord<PoolRecord>(entry, validPool));
    const listing = await this.ctx.store.list(keys.ips(poolId));
    const prefix = keys.ips(poolId) + '/';
    return listing.entries
      .map((e) => {
        const ip = e.key.slice(prefix.length);
        return { ip, value: parseIp(ip)?.value ?? 0n, owner: decodeRecord<IpRecord>(e, validIp).o };
      })
      .sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : 0))
      .map(({ ip, owner }) => ({ address: `${ip}/${g.cidr.prefix}`, ip, owner }));
  }

  /**
   * Checks the pool's invariants from one consistent listing: every set bit has an address key and
   * vice versa, owner records and address keys agree, nothing reserved or outside the pool is
   * allocated. Returns the problems found (empty when consistent) and the number of addresses held.
   */
  async check(poolId: string): Promise<{ allocated: number; problems: string[] }> {
    const entry = await this.ctx.store.get(keys.pool(poolId));
    if (!entry) throw new PoolNotFoundError(poolId);
    const g = poolGeometry(decodeRecord<PoolRecord>(entry, validPool));
    const root = keys.addrs(poolId) + '/';
    const listing = await this.ctx.store.list(keys.addrs(poolId));
    const problems: string[] = [];
    const bits = new Set<bigint>();
    const ips = new Map<string, string>();
    const owners = new Map<string, string[]>();
    for (const e of listing.entries) {
      const rel = e.key.slice(root.length);
      const [kind, name] = [rel.slice(0, rel.indexOf('/')), rel.slice(rel.indexOf('/') + 1)];
      if (rel === 'cursor') continue;
      if (kind === 'shards') {
        const idx = BigInt(name);
        const s = this.shardFromEntry(g, e);
        for (const off of s.bm.setBits()) bits.add(idx * BigInt(g.shardSize) + BigInt(off));
      } else if (kind === 'ips') {
        ips.set(name, decodeRecord<IpRecord>(e, validIp).o);
      } else if (kind === 'owners') {
        const rec = decodeRecord<OwnerRecord>(e, validOwner);
        owners.set(rec.o, rec.ips);
      } else problems.push(`unexpected key ${e.key}`);
    }
    for (const ord of bits) {
      const ip = ordinalIp(g, ord);
      if (ord >= g.size) problems.push(`bit ${ord} is outside the pool`);
      if (g.reservedLabels.has(ord)) problems.push(`reserved address ${ip} ${g.reservedLabels.get(ord)} is allocated`);
      if (!ips.has(ip)) problems.push(`bit for ${ip} is set but no address key exists`);
    }
    for (const [ip, owner] of ips) {
      const parsed = parseIp(ip);
      const ord = parsed ? ipOrdinal(g, parsed) : undefined;
      if (ord === undefined) problems.push(`address key ${ip} is outside the pool`);
      else if (!bits.has(ord)) problems.push(`address ${ip} has a key but its bit is clear`);
      if (!owners.get(owner)?.includes(ip)) problems.push(`address ${ip} is held by ${owner} whose owner record does not list it`);
    }
    for (const [owner, list] of owners) {
      if (list.length === 0) problems.push(`owner record of ${owner} is empty`);
      for (const ip of list) if (ips.get(ip) !== owner) problems.push(`owner ${owner} lists ${ip}, held by ${ips.get(ip) ?? 'nobody'}`);
    }
    return { allocated: ips.size, problems };
  }
}
