/**
 * The embedded store: one SQLite file (better-sqlite3, WAL mode) shared by every process on the
 * machine that opens it, so several agents in simulated hosts can use one store.
 *
 * - Every write runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock: conditional
 *   writes from different processes exclude each other for real.
 * - A global revision counter (table `meta`) is bumped once per write transaction; each key keeps the
 *   revision of its last write. Every change is also appended to `log`, which gives watches exact
 *   history: a watch from revision R replays `log` rows with `rev > R`. The log keeps the last
 *   {@link LOG_RETAIN_REVISIONS} revisions; a watch from an older revision is told to re-list.
 * - A `startsWith` range is native: listings and watches scan the key range from `<prefix>/<startsWith>`
 *   to its prefix end, in `kv` and in `log` alike.
 * - Other processes' commits are noticed by polling `PRAGMA data_version` (cheap: it reads shared
 *   memory) every {@link WATCH_POLL_MS}; this process's own commits wake watches directly.
 * - Leases are rows with an expiry time; their owner pushes the expiry forward every TTL/3, and every
 *   open store sweeps expired leases (deleting their keys, which watches see as deletes). If no
 *   process has the file open, expired keys are swept by the next one that opens it.
 * - SQLite is synchronous; a locked database is retried asynchronously in short steps so the event
 *   loop never blocks for long, and gives up with `StoreUnavailableError` after `timeoutMs`.
 */

import Database from 'better-sqlite3';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { backendSettings, checkLeaseTtl, checkValueSize } from './backend-common.ts';
import { sleep } from './deadline.ts';
import { LeaseLostError, StoreClosedError, StoreProtocolError, StoreUnavailableError, WatchResetError } from './errors.ts';
import { prefixEnd, rangeStart, validateKey, validatePrefix, validateStartsWith } from './keys.ts';
import type { StoreAddress } from './store-url.ts';
import type {
  CasResult,
  KVEntry,
  KVListing,
  KVStore,
  Lease,
  LeaseLostReason,
  ListOptions,
  PutCondition,
  PutOptions,
  Revision,
  StoreCapabilities,
  StoreOptions,
  TxnOp,
  TxnResult,
  WatchBatch,
  WatchEvent,
  WatchOptions,
} from './store.ts';
import { WatchChannel } from './watch-channel.ts';

export const WATCH_POLL_MS = 10;
export const LEASE_SWEEP_MS = 200;
export const LEASE_RENEW_FRACTION = 1 / 3;
export const LOG_RETAIN_REVISIONS = 50_000;
export const LOG_TRIM_EVERY_REVISIONS = 1_000;
/** How long SQLite itself waits for a lock before we yield to the event loop and try again. */
export const BUSY_WAIT_MS = 20;
export const BUSY_RETRY_MAX_SLEEP_MS = 15;
export const MAX_VALUE_BYTES = 4 * 1024 * 1024;
export const MAX_TXN_OPS = 1_024;
export const MIN_LEASE_TTL_MS = 1_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS kv (
  key   TEXT PRIMARY KEY,
  value BLOB NOT NULL,
  rev   INTEGER NOT NULL,
  lease INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS log (
  seq   INTEGER PRIMARY KEY AUTOINCREMENT,
  rev   INTEGER NOT NULL,
  key   TEXT NOT NULL,
  value BLOB
);
CREATE INDEX IF NOT EXISTS log_rev ON log(rev);
CREATE TABLE IF NOT EXISTS leases (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  ttl_ms     INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('rev', 0), ('compacted', 0), ('schema', 1);
`;

interface KvRow {
  key: string;
  value: Buffer;
  rev: number;
  lease: number | null;
}

interface LogRow {
  seq: number;
  rev: number;
  key: string;
  value: Buffer | null;
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

/**
 * The key range of everything strictly below `prefix` (and, with `startsWith`, starting with it
 * there), for an index scan: from the range's first text to that text with its last character plus
 * one (`/` + 1 is `0`; keys are ASCII below 0x7f, and SQLite compares TEXT bytewise).
 */
function prefixRange(prefix: string, startsWith: string | undefined): [string, string] {
  if (prefix === '' && startsWith === undefined) return ['', '\u{10FFFF}'];
  const lo = rangeStart(prefix, startsWith);
  return [lo, prefixEnd(lo)];
}

/**
 * `mkdir -p` with a bounded walk. Node's own recursive mkdirSync loops forever on paths where
 * mkdir keeps answering ENOENT (e.g. under /proc), which would hang the agent at start-up.
 */
function makeDirs(dir: string): void {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d); d = dirname(d)) {
    if (dirname(d) === d || missing.length > 64) break;
    missing.unshift(d);
  }
  for (const d of missing) mkdirSync(d, { mode: 0o700 });
}

function parseRevision(url: string, revision: Revision): number {
  if (!/^\d+$/.test(revision)) throw new StoreProtocolError(url, `revision "${revision}" was not made by the local store`);
  return Number(revision);
}

/** Options of the embedded store beyond the common ones. */
export interface LocalStoreOptions extends StoreOptions {
  /** How many revisions of history watches can resume from; default {@link LOG_RETAIN_REVISIONS}. */
  readonly logRetainRevisions?: number;
}

export async function openLocalStore(address: StoreAddress, options: LocalStoreOptions = {}): Promise<KVStore> {
  const store = new LocalStore(address, options);
  await store.init();
  return store;
}

/** Open stores by database path: a commit in this process wakes the watches of every one at once. */
const openInProcess = new Map<string, Set<LocalStore>>();

class LocalStore implements KVStore {
  readonly backend = 'local' as const;
  readonly url: string;
  readonly capabilities: StoreCapabilities = {
    exactHistory: true,
    maxValueBytes: MAX_VALUE_BYTES,
    maxTxnOps: MAX_TXN_OPS,
    watchReadsWholeRange: false,
  };

  private readonly path: string;
  private readonly timeoutMs: number;
  private readonly retain: number;
  private readonly log: Logger | undefined;
  private db!: Database.Database;
  private closed = false;
  private readonly watchers = new Set<() => void>();
  private readonly leases = new Set<LocalLease>();
  private pollTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastDataVersion = -1;
  private stmts!: ReturnType<LocalStore['prepare']>;

  constructor(address: StoreAddress, options: LocalStoreOptions) {
    this.path = address.path!;
    this.retain = options.logRetainRevisions ?? LOG_RETAIN_REVISIONS;
    ({ url: this.url, timeoutMs: this.timeoutMs, log: this.log } = backendSettings(address, options));
  }

  async init(): Promise<void> {
    try {
      makeDirs(dirname(this.path));
      this.db = new Database(this.path, { timeout: BUSY_WAIT_MS });
    } catch (err) {
      throw new StoreUnavailableError(this.url, `cannot open the database file ${this.path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    await this.withRetry('open', () => {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.exec(SCHEMA);
    });
    this.stmts = this.prepare();
    const peers = openInProcess.get(this.path) ?? new Set<LocalStore>();
    peers.add(this);
    openInProcess.set(this.path, peers);
    this.lastDataVersion = this.db.pragma('data_version', { simple: true }) as number;
    this.sweepTimer = setInterval(() => void this.sweep(), LEASE_SWEEP_MS);
    this.sweepTimer.unref();
    await this.sweep();
  }

  private prepare() {
    const db = this.db;
    return {
      get: db.prepare<[string], KvRow>('SELECT key, value, rev, lease FROM kv WHERE key = ?'),
      range: db.prepare<[string, string], KvRow>(
        'SELECT key, value, rev, lease FROM kv WHERE key >= ? AND key < ? ORDER BY key',
      ),
      metaGet: db.prepare<[string], { value: number }>('SELECT value FROM meta WHERE name = ?'),
      metaSet: db.prepare<[number, string]>('UPDATE meta SET value = ? WHERE name = ?'),
      upsert: db.prepare<[string, Buffer, number, number | null]>(
        'INSERT INTO kv (key, value, rev, lease) VALUES (?, ?, ?, ?) ' +
          'ON CONFLICT(key) DO UPDATE SET value = excluded.value, rev = excluded.rev, lease = excluded.lease',
      ),
      del: db.prepare<[string]>('DELETE FROM kv WHERE key = ?'),
      logAppend: db.prepare<[number, string, Buffer | null]>('INSERT INTO log (rev, key, value) VALUES (?, ?, ?)'),
      logSince: db.prepare<[number, string, string], LogRow>(
        'SELECT seq, rev, key, value FROM log WHERE rev > ? AND key >= ? AND key < ? ORDER BY seq',
      ),
      logTrim: db.prepare<[number]>('DELETE FROM log WHERE rev <= ?'),
      leaseInsert: db.prepare<[number, number]>('INSERT INTO leases (ttl_ms, expires_at) VALUES (?, ?)'),
      leaseRenew: db.prepare<[number, number]>('UPDATE leases SET expires_at = ? WHERE id = ?'),
      leaseGet: db.prepare<[number], { id: number; expires_at: number }>('SELECT id, expires_at FROM leases WHERE id = ?'),
      leaseDelete: db.prepare<[number]>('DELETE FROM leases WHERE id = ?'),
      leaseExpired: db.prepare<[number], { id: number }>('SELECT id FROM leases WHERE expires_at < ?'),
      leaseKeys: db.prepare<[number], { key: string }>('SELECT key FROM kv WHERE lease = ?'),
    };
  }

  // ---- plumbing ----

  private ensureOpen(): void {
    if (this.closed) throw new StoreClosedError(this.url);
  }

  /** Runs a synchronous database step, retrying while the database is locked, up to the deadline. */
  private async withRetry<T>(what: string, fn: () => T, signal?: AbortSignal): Promise<T> {
    const deadline = Date.now() + this.timeoutMs;
    for (let attempt = 0; ; attempt++) {
      this.ensureOpen();
      signal?.throwIfAborted();
      try {
        return fn();
      } catch (err) {
        if (!isBusy(err)) {
          if ((err as { code?: unknown }).code && String((err as { code: unknown }).code).startsWith('SQLITE_')) {
            throw new StoreUnavailableError(this.url, `${what} failed: ${(err as Error).message}`, { cause: err });
          }
          throw err;
        }
        if (Date.now() >= deadline) {
          throw new StoreUnavailableError(
            this.url,
            `${what} got no answer within ${this.timeoutMs} ms: the database is locked by another process`,
            { cause: err },
          );
        }
        await sleep(1 + Math.random() * Math.min(BUSY_RETRY_MAX_SLEEP_MS, attempt + 1));
      }
    }
  }

  /** A write transaction; `fn` gets the revision this transaction will commit as. */
  private write<T>(fn: (rev: number, wrote: () => void) => T): T {
    const run = this.db.transaction(() => {
      const rev = this.stmts.metaGet.get('rev')!.value + 1;
      let changed = false;
      const result = fn(rev, () => (changed = true));
      if (changed) {
        this.stmts.metaSet.run(rev, 'rev');
        if (rev % Math.min(LOG_TRIM_EVERY_REVISIONS, this.retain) === 0) {
          const cut = rev - this.retain;
          if (cut > 0) {
            this.stmts.logTrim.run(cut);
            this.stmts.metaSet.run(cut, 'compacted');
          }
        }
      }
      return { result, changed };
    });
    const { result, changed } = run.immediate();
    if (changed) for (const store of openInProcess.get(this.path) ?? [this]) store.wakeWatchers();
    return result;
  }

  private putRow(rev: number, key: string, value: Uint8Array, lease: number | null): void {
    const buf = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    this.stmts.upsert.run(key, buf, rev, lease);
    this.stmts.logAppend.run(rev, key, buf);
  }

  private deleteRow(rev: number, key: string): boolean {
    const r = this.stmts.del.run(key);
    if (r.changes > 0) this.stmts.logAppend.run(rev, key, null);
    return r.changes > 0;
  }

  private toEntry(row: KvRow): KVEntry {
    return {
      key: row.key,
      value: new Uint8Array(row.value),
      revision: String(row.rev),
      ...(row.lease !== null ? { leaseId: String(row.lease) } : {}),
    };
  }

  private checkValue(key: string, value: Uint8Array): void {
    if (!(value instanceof Uint8Array)) throw new TypeError(`value for store key ${JSON.stringify(key)} must be a Uint8Array`);
    checkValueSize(key, value, MAX_VALUE_BYTES);
  }

  private leaseIdFor(lease: Lease | undefined): number | null {
    if (!lease) return null;
    if (!(lease instanceof LocalLease) || lease.store !== this) {
      throw new TypeError(`lease ${lease.id} was not granted by ${this.url}`);
    }
    return lease.numericId;
  }

  /** Inside a write transaction: throws unless the lease is still alive in the database. */
  private assertLeaseAlive(leaseId: number | null): void {
    if (leaseId === null) return;
    const row = this.stmts.leaseGet.get(leaseId);
    if (!row || row.expires_at < Date.now()) throw new LeaseLostError(String(leaseId), 'it expired before the write');
  }

  // ---- the contract ----

  async get(key: string, options?: { signal?: AbortSignal }): Promise<KVEntry | undefined> {
    validateKey(key);
    return this.withRetry(
      'get',
      () => {
        const row = this.stmts.get.get(key);
        return row ? this.toEntry(row) : undefined;
      },
      options?.signal,
    );
  }

  async list(prefix: string, options?: ListOptions): Promise<KVListing> {
    validatePrefix(prefix);
    validateStartsWith(options?.startsWith);
    const [lo, hi] = prefixRange(prefix, options?.startsWith);
    return this.withRetry(
      'list',
      () =>
        this.db.transaction(() => {
          const rows = this.stmts.range.all(lo, hi);
          const rev = this.stmts.metaGet.get('rev')!.value;
          return { entries: rows.map((r) => this.toEntry(r)), revision: String(rev) };
        })(),
      options?.signal,
    );
  }

  async put(key: string, value: Uint8Array, options?: PutOptions): Promise<Revision> {
    validateKey(key);
    this.checkValue(key, value);
    const leaseId = this.leaseIdFor(options?.lease);
    return this.withRetry(
      'put',
      () =>
        this.write((rev, wrote) => {
          this.assertLeaseAlive(leaseId);
          this.putRow(rev, key, value, leaseId);
          wrote();
          return String(rev);
        }),
      options?.signal,
    );
  }

  async putIf(key: string, value: Uint8Array, condition: PutCondition, options?: PutOptions): Promise<CasResult> {
    validateKey(key);
    this.checkValue(key, value);
    const leaseId = this.leaseIdFor(options?.lease);
    const expected = condition.absent ? undefined : parseRevision(this.url, condition.revision);
    return this.withRetry(
      'putIf',
      () =>
        this.write((rev, wrote): CasResult => {
          const cur = this.stmts.get.get(key);
          const failed = this.conditionFails(cur, condition.absent === true, expected);
          if (failed) return failed;
          this.assertLeaseAlive(leaseId);
          this.putRow(rev, key, value, leaseId);
          wrote();
          return { ok: true, revision: String(rev) };
        }),
      options?.signal,
    );
  }

  private conditionFails(cur: KvRow | undefined, absent: boolean, expected: number | undefined): CasResult | undefined {
    if (absent) return cur ? { ok: false, reason: 'exists', current: this.toEntry(cur) } : undefined;
    if (!cur) return { ok: false, reason: 'missing' };
    if (cur.rev !== expected) return { ok: false, reason: 'modified', current: this.toEntry(cur) };
    return undefined;
  }

  async delete(key: string, options?: { signal?: AbortSignal }): Promise<boolean> {
    validateKey(key);
    return this.withRetry(
      'delete',
      () =>
        this.write((rev, wrote) => {
          const existed = this.deleteRow(rev, key);
          if (existed) wrote();
          return existed;
        }),
      options?.signal,
    );
  }

  async deleteIf(key: string, revision: Revision, options?: { signal?: AbortSignal }): Promise<CasResult> {
    validateKey(key);
    const expected = parseRevision(this.url, revision);
    return this.withRetry(
      'deleteIf',
      () =>
        this.write((rev, wrote): CasResult => {
          const cur = this.stmts.get.get(key);
          const failed = this.conditionFails(cur, false, expected);
          if (failed) return failed;
          this.deleteRow(rev, key);
          wrote();
          return { ok: true, revision: String(rev) };
        }),
      options?.signal,
    );
  }

  async txn(ops: readonly TxnOp[], options?: { signal?: AbortSignal }): Promise<TxnResult> {
    if (ops.length > MAX_TXN_OPS) {
      throw new RangeError(`a transaction may hold at most ${MAX_TXN_OPS} operations, got ${ops.length}`);
    }
    const leaseIds: Array<number | null> = [];
    const expected: Array<number | undefined> = [];
    for (const op of ops) {
      validateKey(op.key);
      if (op.op === 'put') this.checkValue(op.key, op.value);
      leaseIds.push(op.op === 'put' ? this.leaseIdFor(op.lease) : null);
      const cond = op.if;
      expected.push(cond && !cond.absent ? parseRevision(this.url, cond.revision) : undefined);
    }
    return this.withRetry(
      'txn',
      () =>
        this.write((rev, wrote): TxnResult => {
          for (const [i, op] of ops.entries()) {
            if (!op.if) continue;
            const cur = this.stmts.get.get(op.key);
            if (this.conditionFails(cur, op.if.absent === true, expected[i])) return { ok: false, failedKey: op.key };
          }
          const revisions: Array<Revision | undefined> = [];
          for (const [i, op] of ops.entries()) {
            if (op.op === 'put') {
              this.assertLeaseAlive(leaseIds[i]!);
              this.putRow(rev, op.key, op.value, leaseIds[i]!);
              wrote();
              revisions.push(String(rev));
            } else {
              if (op.op === 'delete' && this.deleteRow(rev, op.key)) wrote();
              revisions.push(undefined);
            }
          }
          return { ok: true, revisions };
        }),
      options?.signal,
    );
  }

  watch(prefix: string, fromRevision: Revision, options?: WatchOptions): AsyncIterable<WatchBatch> {
    validatePrefix(prefix);
    validateStartsWith(options?.startsWith);
    const from = parseRevision(this.url, fromRevision);
    const [lo, hi] = prefixRange(prefix, options?.startsWith);
    let last = from;
    let busy = false;
    let dirty = true;
    const wake = (): void => {
      dirty = true;
      if (!busy) void drain();
    };
    const channel = new WatchChannel(() => {
      this.watchers.delete(wake);
      this.updatePoller();
    }, options?.signal);
    const drain = async (): Promise<void> => {
      busy = true;
      try {
        while (dirty && !channel.isClosed) {
          dirty = false;
          const { rows, compacted, rev } = await this.withRetry('watch', () =>
            this.db.transaction(() => ({
              compacted: this.stmts.metaGet.get('compacted')!.value,
              rev: this.stmts.metaGet.get('rev')!.value,
              rows: this.stmts.logSince.all(last, lo, hi),
            }))(),
          );
          if (last < compacted) {
            channel.fail(
              new WatchResetError(prefix, `revision ${last} is older than the retained history (compacted at ${compacted})`),
            );
            return;
          }
          if (rows.length > 0) {
            const events: WatchEvent[] = rows.map((r) =>
              r.value === null
                ? { type: 'delete', key: r.key, revision: String(r.rev) }
                : { type: 'put', key: r.key, value: new Uint8Array(r.value), revision: String(r.rev) },
            );
            channel.push({ events, revision: String(rev) });
          }
          last = Math.max(last, rev);
        }
      } catch (err) {
        channel.fail(
          this.closed ? new StoreClosedError(this.url) : new WatchResetError(prefix, `reading the change log failed: ${(err as Error).message}`, { cause: err }),
        );
      } finally {
        busy = false;
      }
    };
    this.watchers.add(wake);
    this.updatePoller();
    queueMicrotask(wake);
    return channel;
  }

  /** @internal */
  wakeWatchers(): void {
    for (const w of this.watchers) w();
  }

  private updatePoller(): void {
    if (this.watchers.size > 0 && !this.pollTimer && !this.closed) {
      // Ref'd while someone watches: a process iterating a watch must not exit under it.
      this.pollTimer = setInterval(() => this.poll(), WATCH_POLL_MS);
    } else if (this.watchers.size === 0 && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = undefined;
    }
  }

  private poll(): void {
    try {
      const v = this.db.pragma('data_version', { simple: true }) as number;
      if (v !== this.lastDataVersion) {
        this.lastDataVersion = v;
        this.wakeWatchers();
      }
    } catch (err) {
      // Locked by another process: the next tick tries again; watchers notice through their own reads.
      if (!isBusy(err)) this.log?.warn({ err }, 'polling the database for changes failed');
    }
  }

  async grantLease(ttlSeconds: number, options?: { signal?: AbortSignal }): Promise<Lease> {
    checkLeaseTtl(ttlSeconds);
    const ttlMs = Math.max(MIN_LEASE_TTL_MS, Math.round(ttlSeconds * 1000));
    const id = await this.withRetry(
      'grantLease',
      () => Number(this.db.transaction(() => this.stmts.leaseInsert.run(ttlMs, Date.now() + ttlMs).lastInsertRowid).immediate()),
      options?.signal,
    );
    const lease = new LocalLease(this, id, ttlMs);
    this.leases.add(lease);
    lease.start();
    return lease;
  }

  /** @internal */
  async renewLease(lease: LocalLease): Promise<boolean> {
    return this.withRetry('renewLease', () =>
      this.db.transaction(() => this.stmts.leaseRenew.run(Date.now() + lease.ttlMs, lease.numericId).changes > 0).immediate(),
    );
  }

  /** @internal */
  async revokeLease(lease: LocalLease): Promise<void> {
    await this.withRetry('revokeLease', () => this.write((rev, wrote) => this.dropLease(rev, lease.numericId, wrote)));
  }

  /** @internal */
  forgetLease(lease: LocalLease): void {
    this.leases.delete(lease);
  }

  private dropLease(rev: number, id: number, wrote: () => void): void {
    for (const { key } of this.stmts.leaseKeys.all(id)) {
      if (this.deleteRow(rev, key)) wrote();
    }
    this.stmts.leaseDelete.run(id);
  }

  private async sweep(): Promise<void> {
    if (this.closed) return;
    try {
      const now = Date.now();
      if (this.stmts.leaseExpired.all(now).length === 0) return;
      await this.withRetry('sweep', () =>
        this.write((rev, wrote) => {
          for (const { id } of this.stmts.leaseExpired.all(now)) this.dropLease(rev, id, wrote);
        }),
      );
    } catch (err) {
      if (!this.closed) this.log?.warn({ err }, 'sweeping expired leases failed; will retry');
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    for (const lease of [...this.leases]) lease.stop('closed');
    this.closed = true;
    clearInterval(this.sweepTimer);
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    for (const w of [...this.watchers]) w();
    this.watchers.clear();
    const peers = openInProcess.get(this.path);
    peers?.delete(this);
    if (peers?.size === 0) openInProcess.delete(this.path);
    this.db.close();
  }

  /** @internal for leases */
  isClosed(): boolean {
    return this.closed;
  }
}

class LocalLease implements Lease {
  readonly id: string;
  readonly expiryGraceMs = LEASE_SWEEP_MS + 300;
  readonly lost: Promise<LeaseLostReason>;
  private resolveLost!: (r: LeaseLostReason) => void;
  private timer: NodeJS.Timeout | undefined;
  private done = false;

  constructor(
    readonly store: LocalStore,
    readonly numericId: number,
    readonly ttlMs: number,
  ) {
    this.id = String(numericId);
    this.lost = new Promise((resolve) => (this.resolveLost = resolve));
  }

  start(): void {
    const interval = Math.max(100, Math.floor(this.ttlMs * LEASE_RENEW_FRACTION));
    this.timer = setInterval(() => void this.renew(), interval);
  }

  private async renew(): Promise<void> {
    if (this.done) return;
    try {
      const alive = await this.store.renewLease(this);
      if (!alive) this.stop('expired');
    } catch {
      // Locked or closing: try again next tick. If it stays locked past the TTL, the sweep of another
      // process removes the lease and the next successful renewal reports it lost.
    }
  }

  /** @internal */
  stop(reason: LeaseLostReason): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.timer);
    this.store.forgetLease(this);
    this.resolveLost(reason);
  }

  async revoke(): Promise<void> {
    this.stop('revoked');
    if (!this.store.isClosed()) await this.store.revokeLease(this);
  }

  async release(): Promise<void> {
    this.stop('released');
  }
}
