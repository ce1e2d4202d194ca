/**
 * The ZooKeeper backend (`zk://host:2181[,host:2181]/prefix`), on node-zookeeper-client.
 *
 * Layout: key `a/b` is the znode `/<prefix>/a/b`. A key's znode holds {@link KEY_MARKER} followed by
 * the value; znodes created only as parents of deeper keys hold nothing ("implicit parents") and are
 * never listed. A znode can be a key and a parent at once. Implicit parents are left behind when
 * their keys go (removing them would race with concurrent creates below them); deleting a key that
 * still has keys below it turns its znode back into an implicit parent.
 *
 * Revisions: a key's revision is `<mzxid hex>.<data version>`; conditional writes compare the data
 * version on the server and the whole revision on the read just before. A listing's revision is the
 * largest zxid in the subtree (`0` when the prefix znode does not exist): it changes with anything
 * below the prefix and is stable otherwise.
 *
 * Writes (put, putIf, delete, deleteIf, txn) are one engine: read the znodes involved (and their
 * parents), evaluate the caller's conditions on that state, then commit one ZooKeeper multi whose
 * version checks guard every assumption made from the read (a missing znode is guarded by creating
 * and deleting it in the same multi). If a guard fails the whole write is re-read and retried, up
 * to {@link WRITE_MAX_ATTEMPTS} times; a lost race on the caller's own condition is a result.
 *
 * Leases: each lease is its own ZooKeeper session (its own connection) whose session timeout is the
 * TTL; keys bound to it are EPHEMERAL znodes created through that session. Re-binding a key deletes
 * and re-creates its znode in one multi, so watchers see a put, never a delete. Ephemeral znodes
 * cannot have children: a lease-bound put of a key that has keys below it, and a put below a
 * lease-bound key, are refused with {@link InvalidKeyError}.
 *
 * Watches report state (`exactHistory: false`), see `zookeeper-tracker.ts`. A `startsWith` range is
 * filtered client side: the listing and the watch still read and follow every znode below the
 * prefix and keep only the range's keys, so a range is correct (its revisions are the whole
 * prefix's) but not faster than the whole prefix.
 *
 * Reads are served by the server the store's session is connected to; node-zookeeper-client cannot
 * send ZooKeeper's `sync` (its reply parser drops the connection on that opcode), so in a
 * multi-server ensemble a read may lag the leader by that server's apply delay. Conditional writes
 * are always decided by the leader.
 */

import type { Logger } from 'pino';
import { backendSettings, checkLeaseTtl, checkValueSize } from './backend-common.ts';
import { backoffDelay, sleep, withDeadline } from './deadline.ts';
import {
  InvalidKeyError,
  InvalidStoreUrlError,
  LeaseLostError,
  StoreClosedError,
  StoreProtocolError,
  StoreUnavailableError,
  ValueTooLargeError,
  WatchResetError,
  isStoreError,
} from './errors.ts';
import { isUnder, validateKey, validatePrefix, validateStartsWith } from './keys.ts';
import { SnapshotCache } from './snapshot-diff.ts';
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
  WatchOptions,
} from './store.ts';
import type { StoreAddress } from './store-url.ts';
import { WatchChannel } from './watch-channel.ts';
import {
  KEY_MARKER,
  PrefixTracker,
  TrackedWatch,
  decodeNodeData,
  hexZxid,
  keyRevision,
  leaseIdOf,
} from './zookeeper-tracker.ts';
import {
  CLOSE_CONFIRM_MS,
  SessionEndedError,
  ZK,
  ZkError,
  ZkSession,
  isConnectionError,
  type DataReply,
  type MultiOutcome,
  type SessionEndReason,
  type ZkOp,
  type ZkStat,
} from './zookeeper-session.ts';

/**
 * Session timeout of the store's own session (reads, writes, watches). It holds no ephemeral znodes;
 * a watch survives a server restart or a disconnection shorter than this without a re-list.
 */
export const MAIN_SESSION_TIMEOUT_MS = 10_000;
/**
 * Largest value: ZooKeeper refuses requests above jute.maxbuffer (default 1 MiB − 1 byte); this
 * leaves room for the marker byte, a 1 KiB key below the prefix, ACLs and multi headers.
 */
export const MAX_VALUE_BYTES = 1_000_000;
/** Largest sum of the values of one transaction (one multi is one request). */
export const MAX_TXN_VALUE_BYTES = 1_000_000;
/** Largest transaction; ZooKeeper itself only limits the request size. Same as etcd's default. */
export const MAX_TXN_OPS = 128;
/** A write is re-read and retried this often when a concurrent writer invalidates its read. */
export const WRITE_MAX_ATTEMPTS = 12;
export const WRITE_RETRY_BASE_MS = 5;
export const WRITE_RETRY_CAP_MS = 250;
/** Pause before retrying a read after a connection problem. */
export const READ_RETRY_BASE_MS = 20;
export const READ_RETRY_CAP_MS = 500;
/**
 * ZooKeeper's default tickTime. A session expires between its timeout and about two ticks later
 * (expiry is checked per tick and deadlines are rounded up to a tick); clients cannot see tickTime.
 */
export const ZK_DEFAULT_TICK_MS = 2_000;
/** Paths remembered as existing persistent parents (to skip reading them on every write). */
const KNOWN_PARENTS_MAX = 10_000;

/** ZooKeeper-specific options on top of {@link StoreOptions}. */
export interface ZookeeperStoreOptions extends StoreOptions {
  /** Session timeout of the store's own session; default {@link MAIN_SESSION_TIMEOUT_MS}. */
  readonly sessionTimeoutMs?: number;
}

/**
 * Opens a ZooKeeper store. Nothing is sent until the first call; sessions connect lazily and a lost
 * session is replaced by a new one on the next call.
 */
export async function openZookeeperStore(address: StoreAddress, options: ZookeeperStoreOptions = {}): Promise<KVStore> {
  return new ZookeeperStore(address, options);
}

type WriteOp =
  | { readonly kind: 'put'; readonly key: string; readonly path: string; readonly data: Buffer; readonly if?: PutCondition; readonly lease?: ZkLease }
  | { readonly kind: 'delete'; readonly key: string; readonly path: string; readonly if?: { readonly revision: Revision } }
  | { readonly kind: 'check'; readonly key: string; readonly path: string; readonly if: PutCondition };

type WriteOutcome =
  | { readonly ok: true; readonly revisions: Array<Revision | undefined>; readonly existed: boolean[] }
  | { readonly ok: false; readonly index: number; readonly reason: 'exists' | 'modified' | 'missing'; readonly current?: KVEntry };

/** What a read before a write found at a path: `data` only for the ops' own paths. */
interface NodeRead {
  readonly stat: ZkStat;
  readonly value?: Uint8Array;
  readonly isKey: boolean;
}

/** The planner's view of a znode while it lays out a multi. */
interface SimNode {
  exists: boolean;
  version: number;
  ephemeralOwner: bigint;
  numChildren: number;
  isKey: boolean;
}

const EMPTY = Buffer.alloc(0);
const GUARD_CODES: ReadonlySet<number> = new Set([ZK.BAD_VERSION, ZK.NODE_EXISTS, ZK.NO_NODE, ZK.NOT_EMPTY, ZK.NO_CHILDREN_FOR_EPHEMERALS]);

class ZookeeperStore implements KVStore {
  readonly backend = 'zookeeper' as const;
  readonly url: string;
  readonly capabilities: StoreCapabilities = {
    exactHistory: false,
    maxValueBytes: MAX_VALUE_BYTES,
    maxTxnOps: MAX_TXN_OPS,
    watchReadsWholeRange: false,
  };

  private readonly root: string;
  private readonly timeoutMs: number;
  private readonly mainTimeoutMs: number;
  private readonly digest: string | undefined;
  private readonly log: Logger | undefined;
  private readonly cache = new SnapshotCache();
  private readonly leases = new Set<ZkLease>();
  private readonly watches = new Set<TrackedWatch>();
  private readonly knownParents = new Set<string>();
  private main: ZkSession | undefined;
  private closed: Promise<void> | undefined;

  constructor(
    private readonly address: StoreAddress,
    options: ZookeeperStoreOptions,
  ) {
    ({ url: this.url, timeoutMs: this.timeoutMs, log: this.log } = backendSettings(address, options));
    this.root = `/${address.prefix}`;
    this.mainTimeoutMs = options.sessionTimeoutMs ?? MAIN_SESSION_TIMEOUT_MS;
    const username = options.auth?.username ?? address.username;
    const password = options.auth?.password ?? address.password;
    if ((username === undefined) !== (password === undefined)) {
      throw new InvalidStoreUrlError(this.url, 'ZooKeeper digest authentication needs both a user name and a password');
    }
    this.digest = username !== undefined ? `${username}:${password}` : undefined;
    if (address.hosts.length === 0) throw new InvalidStoreUrlError(this.url, 'no ZooKeeper server given');
  }

  // ---- reads ----

  async get(key: string, options: { signal?: AbortSignal } = {}): Promise<KVEntry | undefined> {
    validateKey(key);
    return this.withMain(`get ${key}`, options.signal, async (session) => entryOf(key, await session.getData(this.pathOf(key))));
  }

  async list(prefix: string, options: ListOptions = {}): Promise<KVListing> {
    validatePrefix(prefix);
    const { startsWith } = options;
    validateStartsWith(startsWith);
    return this.withMain(`list ${JSON.stringify(prefix)}`, options.signal, (session, signal) => {
      return new Promise<KVListing>((resolve, reject) => {
        const tracker: PrefixTracker = new PrefixTracker(session, this.pathOf(prefix), this.root, {
          onUpdate: () => {
            if (!tracker.settled) return;
            tracker.stop();
            signal.removeEventListener('abort', onAbort);
            // a range is filtered here; the revision stays the whole prefix's, as a range watch computes it
            const snapshot = tracker.entries(startsWith === undefined ? undefined : (key) => isUnder(prefix, key, startsWith));
            const revision = hexZxid(tracker.revision());
            this.cache.remember(prefix, startsWith, revision, snapshot);
            const entries = [...snapshot]
              .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
              .map(([key, e]): KVEntry => ({ key, value: e.value, revision: e.revision, ...(e.leaseId ? { leaseId: e.leaseId } : {}) }));
            resolve({ entries, revision });
          },
          onFail: (err) => {
            signal.removeEventListener('abort', onAbort);
            reject(err);
          },
        });
        const onAbort = (): void => {
          tracker.stop();
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        tracker.start();
      });
    });
  }

  watch(prefix: string, fromRevision: Revision, options: WatchOptions = {}): AsyncIterable<WatchBatch> {
    validatePrefix(prefix);
    validateStartsWith(options.startsWith);
    let watch: TrackedWatch | undefined;
    const channel = new WatchChannel(() => watch?.stop(), options.signal);
    if (this.closed) {
      channel.fail(new StoreClosedError(this.url));
      return channel;
    }
    watch = new TrackedWatch({
      session: this.mainSession(),
      rootPath: this.pathOf(prefix),
      storeRoot: this.root,
      prefix,
      ...(options.startsWith !== undefined ? { startsWith: options.startsWith } : {}),
      fromRevision,
      cache: this.cache,
      channel,
      startTimeoutMs: this.timeoutMs,
      url: this.url,
      mapError: (err) => this.watchError(prefix, err),
      ...(this.log ? { logger: this.log } : {}),
      onStop: () => this.watches.delete(watch!),
    });
    this.watches.add(watch);
    if (!channel.isClosed) watch.start();
    return channel;
  }

  // ---- writes ----

  async put(key: string, value: Uint8Array, options: PutOptions = {}): Promise<Revision> {
    const op = this.putOp(key, value, undefined, options.lease);
    const r = await this.write(`put ${key}`, [op], options.signal);
    if (!r.ok) throw new StoreProtocolError(this.url, `unconditional put of ${key} reported a failed condition`);
    return r.revisions[0]!;
  }

  async putIf(key: string, value: Uint8Array, condition: PutCondition, options: PutOptions = {}): Promise<CasResult> {
    const op = this.putOp(key, value, condition, options.lease);
    const r = await this.write(`putIf ${key}`, [op], options.signal);
    if (!r.ok) return { ok: false, reason: r.reason, ...(r.current ? { current: r.current } : {}) };
    return { ok: true, revision: r.revisions[0]! };
  }

  async delete(key: string, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    validateKey(key);
    const r = await this.write(`delete ${key}`, [{ kind: 'delete', key, path: this.pathOf(key) }], options.signal);
    return r.ok && r.existed[0] === true;
  }

  async deleteIf(key: string, revision: Revision, options: { signal?: AbortSignal } = {}): Promise<CasResult> {
    validateKey(key);
    const r = await this.write(`deleteIf ${key}`, [{ kind: 'delete', key, path: this.pathOf(key), if: { revision } }], options.signal);
    if (!r.ok) return { ok: false, reason: r.reason, ...(r.current ? { current: r.current } : {}) };
    return { ok: true, revision };
  }

  async txn(ops: readonly TxnOp[], options: { signal?: AbortSignal } = {}): Promise<TxnResult> {
    if (ops.length > MAX_TXN_OPS) {
      throw new InvalidKeyError(ops[MAX_TXN_OPS]!.key, `a transaction holds at most ${MAX_TXN_OPS} operations, this one has ${ops.length}`);
    }
    const writeOps: WriteOp[] = [];
    const written = new Set<string>();
    let total = 0;
    for (const op of ops) {
      validateKey(op.key);
      if (op.op !== 'check') {
        if (written.has(op.key)) throw new InvalidKeyError(op.key, 'it is written more than once in one transaction');
        written.add(op.key);
      }
      if (op.op === 'put') {
        total += op.value.byteLength;
        if (total > MAX_TXN_VALUE_BYTES) throw new ValueTooLargeError(op.key, total, MAX_TXN_VALUE_BYTES);
        writeOps.push(this.putOp(op.key, op.value, op.if, op.lease));
      } else if (op.op === 'delete') {
        writeOps.push({ kind: 'delete', key: op.key, path: this.pathOf(op.key), ...(op.if ? { if: op.if } : {}) });
      } else {
        writeOps.push({ kind: 'check', key: op.key, path: this.pathOf(op.key), if: op.if });
      }
    }
    if (writeOps.length === 0) return { ok: true, revisions: [] };
    const r = await this.write('txn', writeOps, options.signal);
    if (!r.ok) return { ok: false, failedKey: writeOps[r.index]!.key };
    return { ok: true, revisions: r.revisions };
  }

  // ---- leases ----

  async grantLease(ttlSeconds: number, options: { signal?: AbortSignal } = {}): Promise<Lease> {
    checkLeaseTtl(ttlSeconds);
    this.assertOpen();
    const session = new ZkSession({
      servers: this.address.hosts,
      sessionTimeoutMs: Math.round(ttlSeconds * 1000),
      ...(this.digest ? { digest: this.digest } : {}),
      ...(this.log ? { logger: this.log } : {}),
      role: 'lease',
    });
    session.start();
    try {
      await withDeadline(this.url, 'grantLease', this.timeoutMs, (signal) => session.ready(signal), options.signal);
    } catch (err) {
      await session.close('drop', 'closed');
      throw this.mapError(err, 'grantLease');
    }
    const lease = new ZkLease(session, this.url, this.timeoutMs);
    this.leases.add(lease);
    void lease.lost.then(() => this.leases.delete(lease));
    this.log?.debug({ lease: lease.id, ttlMs: lease.ttlMs }, 'lease granted');
    return lease;
  }

  // ---- lifecycle ----

  close(): Promise<void> {
    this.closed ??= (async () => {
      for (const w of [...this.watches]) w.fail(new StoreClosedError(this.url));
      const closing: Array<Promise<unknown>> = [...this.leases].map((l) => l.session.close('drop', 'closed'));
      if (this.main) closing.push(this.main.close('graceful', 'closed', Math.min(this.timeoutMs, CLOSE_CONFIRM_MS)));
      this.main = undefined;
      await Promise.all(closing);
    })();
    return this.closed;
  }

  // ---- internals ----

  private assertOpen(): void {
    if (this.closed) throw new StoreClosedError(this.url);
  }

  private pathOf(key: string): string {
    return key === '' ? this.root : `${this.root}/${key}`;
  }

  private mainSession(): ZkSession {
    if (this.main && !this.main.isEnded) return this.main;
    const session = new ZkSession({
      servers: this.address.hosts,
      sessionTimeoutMs: this.mainTimeoutMs,
      ...(this.digest ? { digest: this.digest } : {}),
      ...(this.log ? { logger: this.log } : {}),
      role: 'main',
    });
    session.onEnd(() => {
      if (this.main === session) this.main = undefined;
    });
    session.start();
    this.main = session;
    return session;
  }

  private putOp(key: string, value: Uint8Array, condition: PutCondition | undefined, lease: Lease | undefined): WriteOp {
    validateKey(key);
    checkValueSize(key, value, MAX_VALUE_BYTES);
    let zkLease: ZkLease | undefined;
    if (lease) {
      if (!(lease instanceof ZkLease) || !this.leases.has(lease)) {
        if (lease instanceof ZkLease && lease.session.isEnded) throw new LeaseLostError(lease.id, `its ZooKeeper session is over (${lease.session.endedReason})`);
        throw new TypeError(`lease ${lease.id} was not granted by this store (${this.url})`);
      }
      zkLease = lease;
    }
    const data = Buffer.allocUnsafe(value.byteLength + 1);
    data[0] = KEY_MARKER;
    data.set(value, 1);
    return { kind: 'put', key, path: this.pathOf(key), data, ...(condition ? { if: condition } : {}), ...(zkLease ? { lease: zkLease } : {}) };
  }

  /** Runs `fn` on the store's session within the deadline, retrying reads over connection trouble. */
  private withMain<T>(what: string, outer: AbortSignal | undefined, fn: (session: ZkSession, signal: AbortSignal) => Promise<T>): Promise<T> {
    this.assertOpen();
    return withDeadline(
      this.url,
      what,
      this.timeoutMs,
      async (signal) => {
        for (let attempt = 0; ; attempt++) {
          const session = this.mainSession();
          try {
            await session.ready(signal);
            return await fn(session, signal);
          } catch (err) {
            if (signal.aborted) throw err;
            if (!isConnectionError(err)) throw this.mapError(err, what);
            this.assertOpen();
            await sleep(backoffDelay(attempt, READ_RETRY_BASE_MS, READ_RETRY_CAP_MS), signal);
          }
        }
      },
      outer,
    );
  }

  /** The write engine (see the module comment). */
  private write(what: string, ops: readonly WriteOp[], outer: AbortSignal | undefined): Promise<WriteOutcome> {
    this.assertOpen();
    const leases = new Set(ops.flatMap((o) => (o.kind === 'put' && o.lease ? [o.lease] : [])));
    if (leases.size > 1) {
      const second = ops.filter((o) => o.kind === 'put' && o.lease).find((o) => o.kind === 'put' && o.lease !== [...leases][0])!;
      throw new InvalidKeyError(second.key, 'a ZooKeeper transaction can bind keys to one lease only (its znodes are created by that lease\'s session)');
    }
    const lease = [...leases][0];
    return withDeadline(
      this.url,
      what,
      this.timeoutMs,
      async (signal) => {
        let conflicts = 0;
        for (let attempt = 0; ; attempt++) {
          const session = lease ? lease.session : this.mainSession();
          let state: Map<string, NodeRead | undefined>;
          try {
            if (lease?.session.isEnded) throw new LeaseLostError(lease.id, `its ZooKeeper session is over (${lease.session.endedReason})`);
            await session.ready(signal);
            state = await this.readForWrite(session, ops, conflicts === 0);
          } catch (err) {
            if (signal.aborted || isStoreError(err)) throw err;
            if (lease && err instanceof SessionEndedError) throw new LeaseLostError(lease.id, err.message);
            if (!isConnectionError(err)) throw this.mapError(err, what);
            this.assertOpen();
            await sleep(backoffDelay(attempt, READ_RETRY_BASE_MS, READ_RETRY_CAP_MS), signal);
            continue;
          }
          const failed = evaluateConditions(ops, state);
          if (failed) return failed;
          const plan = this.plan(ops, state, session.idBigint);
          let result: MultiOutcome;
          try {
            result = await session.multi(plan.zkOps);
          } catch (err) {
            if (lease && err instanceof SessionEndedError) throw new LeaseLostError(lease.id, err.message);
            if (isConnectionError(err)) {
              throw new StoreUnavailableError(this.url, `${what}: the connection broke before ZooKeeper answered; the write may or may not have been applied`, { cause: err });
            }
            throw this.mapError(err, what);
          }
          const outcome = result;
          if (outcome.ok) {
            for (const p of plan.createdParents) this.rememberParent(p);
            for (const p of plan.removed) this.knownParents.delete(p);
            const revisions = plan.revisionFrom.map((r) =>
              r === undefined ? undefined : r.kind === 'create' ? `${hexZxid(outcome.zxid)}.0` : keyRevision(outcome.stats[r.index]!),
            );
            return { ok: true, revisions, existed: plan.existed };
          }
          if (!GUARD_CODES.has(outcome.code)) throw this.mapError(new ZkError(outcome.code, plan.zkOps[outcome.index]?.path ?? this.root), what);
          // Someone changed what the read saw: read again (without trusting remembered parents).
          this.knownParents.clear();
          if (++conflicts >= WRITE_MAX_ATTEMPTS) {
            throw new StoreUnavailableError(this.url, `${what}: gave up after ${conflicts} attempts, concurrent writers kept changing the znodes involved`);
          }
          await sleep(backoffDelay(conflicts, WRITE_RETRY_BASE_MS, WRITE_RETRY_CAP_MS), signal);
        }
      },
      outer,
    );
  }

  /** Reads every op's znode (data) and every parent of it (stat), all pipelined. */
  private async readForWrite(session: ZkSession, ops: readonly WriteOp[], trustKnownParents: boolean): Promise<Map<string, NodeRead | undefined>> {
    const own = new Set(ops.map((o) => o.path));
    const parents = new Set<string>();
    for (const o of ops) {
      for (const p of ancestors(o.path)) if (!own.has(p) && !(trustKnownParents && this.knownParents.has(p))) parents.add(p);
    }
    const state = new Map<string, NodeRead | undefined>();
    await Promise.all([
      ...[...own].map(async (p) => {
        const r = await session.getData(p);
        state.set(p, r ? nodeRead(r) : undefined);
      }),
      ...[...parents].map(async (p) => {
        const stat = await session.exists(p);
        state.set(p, stat ? { stat, isKey: false } : undefined);
        if (stat && stat.ephemeralOwner === 0n) this.rememberParent(p);
      }),
    ]);
    return state;
  }

  private rememberParent(path: string): void {
    if (this.knownParents.size >= KNOWN_PARENTS_MAX) this.knownParents.clear();
    this.knownParents.add(path);
  }

  /** Lays out the multi for `ops` on the state read (see the module comment). */
  private plan(
    ops: readonly WriteOp[],
    state: ReadonlyMap<string, NodeRead | undefined>,
    sessionId: bigint,
  ): {
    zkOps: ZkOp[];
    revisionFrom: Array<{ kind: 'create' } | { kind: 'set'; index: number } | undefined>;
    existed: boolean[];
    createdParents: string[];
    removed: string[];
  } {
    const sim = new Map<string, SimNode>();
    const at = (path: string): SimNode => {
      let s = sim.get(path);
      if (!s) {
        const r = state.get(path);
        if (r) s = { exists: true, version: r.stat.version, ephemeralOwner: r.stat.ephemeralOwner, numChildren: r.stat.numChildren, isKey: r.isKey };
        else if (!state.has(path) && (path === '/' || this.knownParents.has(path))) s = { exists: true, version: -1, ephemeralOwner: 0n, numChildren: 1, isKey: false };
        else s = { exists: false, version: 0, ephemeralOwner: 0n, numChildren: 0, isKey: false };
        sim.set(path, s);
      }
      return s;
    };
    const zkOps: ZkOp[] = [];
    const revisionFrom: Array<{ kind: 'create' } | { kind: 'set'; index: number } | undefined> = [];
    const existed: boolean[] = [];
    const createdParents: string[] = [];
    const removed: string[] = [];
    const keyOf = (path: string): string => (path.startsWith(this.root + '/') ? path.slice(this.root.length + 1) : path);

    const created = (path: string, ephemeralOwner: bigint, isKey: boolean): void => {
      const s = at(path);
      Object.assign(s, { exists: true, version: 0, ephemeralOwner, numChildren: 0, isKey });
      const parent = parentOf(path);
      if (parent) at(parent).numChildren++;
    };
    const ensureParents = (key: string, path: string): void => {
      for (const p of ancestors(path)) {
        const s = at(p);
        if (!s.exists) {
          zkOps.push({ op: 'create', path: p, data: EMPTY, ephemeral: false });
          created(p, 0n, false);
          createdParents.push(p);
        } else if (s.ephemeralOwner !== 0n) {
          throw new InvalidKeyError(key, `"${keyOf(p)}" above it is bound to a lease, and ZooKeeper keys bound to a lease (ephemeral znodes) cannot have keys below them`);
        }
      }
    };
    /** Guards "no key at path": the znode stays implicit, or stays absent. */
    const guardNoKey = (path: string): void => {
      const s = at(path);
      if (s.exists) {
        zkOps.push({ op: 'check', path, version: s.version });
        return;
      }
      const chain = [...ancestors(path), path];
      const missing = chain.findIndex((p) => !at(p).exists);
      const above = missing > 0 ? at(chain[missing - 1]!) : undefined;
      if (above && above.ephemeralOwner !== 0n) {
        // Nothing can be created below an ephemeral znode while it lives.
        zkOps.push({ op: 'check', path: chain[missing - 1]!, version: above.version });
        return;
      }
      const first = chain[missing]!;
      zkOps.push({ op: 'create', path: first, data: EMPTY, ephemeral: false }, { op: 'delete', path: first, version: 0 });
    };

    ops.forEach((o) => {
      if (o.kind === 'put') {
        const s = at(o.path);
        const owner = o.lease ? sessionId : 0n;
        existed.push(s.isKey);
        if (!s.exists) {
          ensureParents(o.key, o.path);
          zkOps.push({ op: 'create', path: o.path, data: o.data, ephemeral: !!o.lease });
          created(o.path, owner, true);
          revisionFrom.push({ kind: 'create' });
          return;
        }
        if (o.lease && s.numChildren > 0) {
          throw new InvalidKeyError(o.key, 'it has keys below it, and ZooKeeper keys bound to a lease (ephemeral znodes) cannot have keys below them');
        }
        if (s.ephemeralOwner === owner) {
          zkOps.push({ op: 'set', path: o.path, data: o.data, version: s.version });
          revisionFrom.push({ kind: 'set', index: zkOps.length - 1 });
          Object.assign(s, { version: s.version + 1, isKey: true });
        } else {
          // Re-bind: delete and re-create in the same multi, so it is one change to watchers.
          zkOps.push({ op: 'delete', path: o.path, version: s.version }, { op: 'create', path: o.path, data: o.data, ephemeral: !!o.lease });
          Object.assign(s, { version: 0, ephemeralOwner: owner, isKey: true });
          revisionFrom.push({ kind: 'create' });
        }
      } else if (o.kind === 'delete') {
        const s = at(o.path);
        existed.push(s.isKey);
        revisionFrom.push(undefined);
        if (!s.isKey) {
          guardNoKey(o.path);
        } else if (s.numChildren > 0) {
          zkOps.push({ op: 'set', path: o.path, data: EMPTY, version: s.version });
          Object.assign(s, { version: s.version + 1, isKey: false });
        } else {
          zkOps.push({ op: 'delete', path: o.path, version: s.version });
          Object.assign(s, { exists: false, isKey: false });
          const parent = parentOf(o.path);
          if (parent) at(parent).numChildren--;
          removed.push(o.path);
        }
      } else {
        existed.push(at(o.path).isKey);
        revisionFrom.push(undefined);
        if ('absent' in o.if && o.if.absent) guardNoKey(o.path);
        else zkOps.push({ op: 'check', path: o.path, version: at(o.path).version });
      }
    });
    return { zkOps, revisionFrom, existed, createdParents, removed };
  }

  private watchError(prefix: string, err: unknown): unknown {
    if (err instanceof SessionEndedError) {
      if (err.reason === 'closed' && this.closed) return new StoreClosedError(this.url);
      return new WatchResetError(prefix, `the ZooKeeper session ended (${err.reason}); changes may have been missed`, { cause: err });
    }
    return this.mapError(err, `watch ${JSON.stringify(prefix)}`);
  }

  private mapError(err: unknown, what: string): unknown {
    if (isStoreError(err)) return err;
    if (err instanceof ZkError) {
      if (err.code === ZK.NO_AUTH || err.code === ZK.INVALID_ACL) {
        return new InvalidStoreUrlError(
          this.url,
          `ZooKeeper denied access to ${err.path} (${err.code === ZK.NO_AUTH ? 'NoAuth' : 'InvalidACL'}) during ${what}: ` +
            `the znodes are protected by a digest ACL; give the credentials as user:password@ in the URL or with kv.username/kv.password`,
        );
      }
      return new StoreProtocolError(this.url, `${what}: ${err.message}`, { cause: err });
    }
    if (err instanceof SessionEndedError) {
      if (err.reason === 'auth-failed') return new InvalidStoreUrlError(this.url, `ZooKeeper refused the credentials during ${what}`);
      if (err.reason === 'closed' && this.closed) return new StoreClosedError(this.url);
      return new StoreUnavailableError(this.url, `${what}: ${err.message}`, { cause: err });
    }
    return err;
  }
}

/** A lease: one ZooKeeper session whose timeout is the TTL. */
class ZkLease implements Lease {
  readonly id: string;
  readonly ttlMs: number;
  readonly expiryGraceMs: number;
  readonly lost: Promise<LeaseLostReason>;

  constructor(
    readonly session: ZkSession,
    private readonly url: string,
    private readonly timeoutMs: number,
  ) {
    this.id = session.id;
    this.ttlMs = session.timeoutMs;
    // The server's tick is at most half the negotiated timeout when minSessionTimeout keeps its
    // default of two ticks, and ZooKeeper's default tick is 2 s: expiry comes within two ticks.
    this.expiryGraceMs = Math.min(this.ttlMs, 2 * ZK_DEFAULT_TICK_MS);
    this.lost = session.ended.then(leaseReason);
  }

  async revoke(): Promise<void> {
    if (this.session.isEnded) return;
    const confirmed = await this.session.close('graceful', 'revoked', this.timeoutMs);
    if (!confirmed) {
      throw new StoreUnavailableError(this.url, `revoking lease ${this.id}: ZooKeeper did not confirm closing the session; its keys go when the session times out`);
    }
  }

  async release(): Promise<void> {
    await this.session.close('drop', 'released');
  }
}

function leaseReason(reason: SessionEndReason): LeaseLostReason {
  return reason === 'auth-failed' ? 'expired' : reason;
}

function nodeRead(r: DataReply): NodeRead {
  const value = decodeNodeData(r.data);
  return value === undefined ? { stat: r.stat, isKey: false } : { stat: r.stat, value, isKey: true };
}

function entryOf(key: string, r: DataReply | undefined): KVEntry | undefined {
  if (!r) return undefined;
  const value = decodeNodeData(r.data);
  if (value === undefined) return undefined;
  const leaseId = leaseIdOf(r.stat);
  return { key, value, revision: keyRevision(r.stat), ...(leaseId ? { leaseId } : {}) };
}

/** The caller's conditions, all evaluated on the state read before the write. */
function evaluateConditions(ops: readonly WriteOp[], state: ReadonlyMap<string, NodeRead | undefined>): WriteOutcome | undefined {
  for (let i = 0; i < ops.length; i++) {
    const o = ops[i]!;
    const cond = o.if;
    if (!cond) continue;
    const r = state.get(o.path);
    const current = r?.isKey ? { key: o.key, value: r.value!, revision: keyRevision(r.stat), ...(leaseIdOf(r.stat) ? { leaseId: leaseIdOf(r.stat)! } : {}) } : undefined;
    if ('absent' in cond && cond.absent) {
      if (current) return { ok: false, index: i, reason: 'exists', current };
    } else if (!current) {
      return { ok: false, index: i, reason: 'missing' };
    } else if (current.revision !== cond.revision) {
      return { ok: false, index: i, reason: 'modified', current };
    }
  }
  return undefined;
}

/** `/a/b/c` → [`/a`, `/a/b`]. */
function ancestors(path: string): string[] {
  const out: string[] = [];
  for (let i = path.indexOf('/', 1); i !== -1; i = path.indexOf('/', i + 1)) out.push(path.slice(0, i));
  return out;
}

function parentOf(path: string): string | undefined {
  const i = path.lastIndexOf('/');
  return i <= 0 ? undefined : path.slice(0, i);
}
