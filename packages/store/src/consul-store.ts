/**
 * The Consul backend (`consul://host:8500[,host2:8500]/prefix`), on Consul's KV HTTP API through the
 * `consul` npm client ({@link ConsulTransport}).
 *
 * - **Revisions**: a key's revision is its `ModifyIndex`; a listing's (and a watch batch's) revision
 *   is the `X-Consul-Index` of the read, i.e. the highest index below the prefix (live keys and
 *   tombstones), or the whole KV table's index when the prefix is empty.
 * - **Writes** are `/v1/txn` transactions (see `consul-txn.ts`): they return the new index, carry the
 *   conditions (`check-index`, `check-not-exists`) and rebind a key to another session atomically.
 * - **Watches** are blocking queries on the prefix. Consul reports state, not history, so each answer
 *   is compared with the previous one (`diffSnapshots`); several writes to one key between two reads
 *   arrive as one put (`exactHistory: false`). A watch needs the state its start revision stands for:
 *   listings are remembered ({@link SnapshotCache}); from an unknown revision the watch proceeds only
 *   if the prefix's index still equals it, else it asks for a re-list. An index that goes backwards
 *   with different data below the prefix (server restarted without its data, snapshot restore)
 *   also means re-list; with the same data it is Consul reaping tombstones, and the watch goes on. A broken connection is
 *   retried for {@link WATCH_RECONNECT_BUDGET_MS}: the next read is compared with the last state, so
 *   nothing is missed, and after that the watch asks for a re-list.
 * - **Ranges** (`startsWith`) are native: Consul's recursive read takes any text prefix, so a listing
 *   or watch reads the path `<prefix>/<startsWith>` and each blocking answer carries only that part
 *   (`watchReadsWholeRange`: every answer is the whole range, so callers split large ones). The
 *   remembered listings and batches are keyed by prefix and `startsWith`.
 * - **Leases** are sessions (see `consul-lease.ts`) of half the requested TTL, so that they end
 *   within it; a session TTL below the server's `session_ttl_min` is raised to the minimum Consul
 *   states in its refusal.
 * - Reads that the contract calls linearizable use `?consistent`.
 */

import type { Logger } from 'pino';
import { backendSettings, checkLeaseTtl, checkValueSize } from './backend-common.ts';
import { BlockingReadInterrupted, ConsulHttpError, ConsulTransport, isAclDenial, type ConsulReply } from './consul-client.ts';
import { ConsulLease, SESSION_TTL_DIVISOR } from './consul-lease.ts';
import {
  CONSUL_TXN_MAX_OPS,
  CONSUL_VERBS_PER_OP,
  compileTxn,
  isMissingKeyError,
  txnFailure,
  txnRevision,
  type ConsulKvOp,
  type ConsulTxnBody,
} from './consul-txn.ts';
import { backoffDelay, sleep } from './deadline.ts';
import { LeaseLostError, StoreClosedError, StoreProtocolError, StoreUnavailableError, ValueTooLargeError, WatchResetError } from './errors.ts';
import { rangeStart, validateKey, validatePrefix, validateStartsWith } from './keys.ts';
import { ReadBudget } from './read-budget.ts';
import { diffSnapshots, SnapshotCache, type Snapshot, type SnapshotEntry } from './snapshot-diff.ts';
import type { StoreAddress } from './store-url.ts';
import type {
  CasResult,
  KVEntry,
  KVListing,
  KVStore,
  Lease,
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
import { DEFAULT_CONSUL_MAX_WATCHES } from './store.ts';
import { WatchChannel } from './watch-channel.ts';

/**
 * How long one blocking query waits on the server for a change: Consul's own default (its
 * `max_query_time` caps it at 10 min unless configured lower). A quiet watch costs one answer — the
 * whole range again — per wait, for each of an agent's watches (on Consul, one per network and per
 * part of a large one); at 15 s that re-reading was most of an idle agent's CPU. An outage is not
 * found by this wait: the transport interrupts blocking reads when another call, or its own liveness
 * check, finds the server unreachable (consul-client.ts), and the watch then reads at once.
 */
export const WATCH_WAIT_S = 300;
/** Consul adds up to wait/16 of random jitter to a blocking query. */
const WATCH_JITTER_FRACTION = 1 / 16;
/** How long a watch keeps trying to reach the server again before it asks for a re-list. */
export const WATCH_RECONNECT_BUDGET_MS = 15_000;
export const WATCH_RETRY_BASE_MS = 100;
export const WATCH_RETRY_CAP_MS = 2_000;
/**
 * When two blocking reads in a row brought changes less than this apart (a burst of writes), the next
 * one waits this long: every answer is the whole prefix (2 000 endpoint records are ≈ 1 MB of JSON,
 * for every watcher of `endpoints/`), so during a burst a watcher reads about twice per interval and
 * gets the writes folded into one batch, instead of one full listing per write. A watch that was quiet
 * hears the first change at once.
 */
export const WATCH_MIN_INTERVAL_MS = 200;
/**
 * Keys one client's watches read per second during a burst ({@link ReadBudget}; `kv.watchrate`).
 * Each answer is its whole range, so without a budget a burst of writes to a large network costs the
 * server one answer of a whole part per write per watcher (hosts × writes × part); with it, at most
 * hosts × this rate. Spent only by watch answers; a quiet client hears a change at once
 * ({@link WATCH_READ_BURST_S} of reads in hand). At this rate a client reads at most ≈ 400 KB/s of
 * endpoint records. (A bound, not a cure: the 100-host burst on two cores failed with and without it,
 * docs/scale.md.)
 */
export const DEFAULT_WATCH_READ_RATE = 500;
/** Seconds of {@link DEFAULT_WATCH_READ_RATE} a quiet client has in hand (the bucket's size). */
export const WATCH_READ_BURST_S = 2;
/** The longest one watch waits for the budget: a client with very many busy watches goes over it rather than fall minutes behind. */
export const WATCH_READ_MAX_PAUSE_MS = 10_000;
/** Listings (and watch batches) whose state a later watch can start from. */
export const SNAPSHOT_CACHE_SIZE = 32;
/**
 * Consul's own limit is 512 KiB per value (`kv_max_value_size`), but writes go through `/v1/txn`,
 * whose whole JSON body is limited to 512 KiB (`txn_max_req_len`) with the value in base64 (4/3):
 * 376 KiB leaves room for the keys and the other verbs of a conditional put.
 */
export const MAX_VALUE_BYTES = 376 * 1024;
/** Consul's default `txn_max_req_len`: the largest `/v1/txn` body, in bytes. */
export const TXN_MAX_REQUEST_BYTES = 512 * 1024;
/** Store operations per transaction: every one may need {@link CONSUL_VERBS_PER_OP} Consul verbs. */
export const MAX_TXN_OPS = Math.floor(CONSUL_TXN_MAX_OPS / CONSUL_VERBS_PER_OP);
const SESSION_NAME = 'kvnet';

/**
 * One KV entry as Consul returns it: `Value` is base64 text in a range read (`getJson`, decoded only
 * where it is needed) and bytes from a single-key read (the client's `buffer` option).
 */
interface ConsulEntry {
  readonly Key: string;
  readonly Value: Buffer | string | null;
  readonly ModifyIndex: number;
  readonly Session?: string;
}

/** A snapshot entry that knows the key it is stored under. */
interface HeldEntry extends SnapshotEntry {
  readonly key?: string;
}

/** One read of a prefix: its entries (a listing's; empty for a watch's read) and the index of the read. */
interface PrefixRead {
  readonly index: bigint;
  readonly entries: KVEntry[];
  readonly snapshot: Snapshot;
}

/** Opens a Consul store. Nothing is sent until the first call. */
export async function openConsulStore(address: StoreAddress, options: StoreOptions): Promise<KVStore> {
  return new ConsulStore(address, options);
}

class ConsulStore implements KVStore {
  readonly backend = 'consul' as const;
  readonly capabilities: StoreCapabilities;
  readonly url: string;
  private readonly transport: ConsulTransport;
  private readonly timeoutMs: number;
  private readonly log: Logger | undefined;
  private readonly prefix: string;
  private readonly listings = new SnapshotCache(SNAPSHOT_CACHE_SIZE);
  private readonly batches = new SnapshotCache(SNAPSHOT_CACHE_SIZE);
  private readonly leases = new Set<ConsulLease>();
  private readonly watches = new Set<WatchChannel>();
  /** What this client's watch answers may read per second (see {@link DEFAULT_WATCH_READ_RATE}). */
  private readonly watchReads: ReadBudget;
  /** Listing paths the token was shown to be allowed to read (see {@link probeRead}). */
  private readonly readablePaths = new Set<string>();
  /** The server's `session_ttl_min`, once a refusal told us. */
  private sessionTtlMinMs = 0;
  private closed = false;

  constructor(address: StoreAddress, options: StoreOptions) {
    ({ url: this.url, timeoutMs: this.timeoutMs, log: this.log } = backendSettings(address, options));
    this.prefix = address.prefix;
    this.transport = new ConsulTransport(address, this.timeoutMs, options, this.log);
    const rate = options.watchReadRate ?? DEFAULT_WATCH_READ_RATE;
    this.watchReads = new ReadBudget(rate, rate * WATCH_READ_BURST_S);
    this.capabilities = {
      exactHistory: false,
      maxValueBytes: MAX_VALUE_BYTES,
      maxTxnOps: MAX_TXN_OPS,
      watchReadsWholeRange: true,
      emptyRangeWatchWakes: true,
      maxWatches: options.maxWatches ?? DEFAULT_CONSUL_MAX_WATCHES,
    };
  }

  // ---- reads ----

  async get(key: string, options: { signal?: AbortSignal } = {}): Promise<KVEntry | undefined> {
    validateKey(key);
    this.assertOpen();
    const reply = await this.request<ConsulEntry>(
      'get',
      (consul, ctx) => consul.kv.get(kvGetOptions({ key: this.serverKey(key), consistent: true, buffer: true, ctx })),
      { signal: options.signal, idempotent: true },
    );
    return reply.body ? this.toEntry(reply.body) : undefined;
  }

  async list(prefix: string, options: ListOptions = {}): Promise<KVListing> {
    validatePrefix(prefix);
    validateStartsWith(options.startsWith);
    this.assertOpen();
    const read = await this.readPrefix(prefix, options.startsWith, { signal: options.signal });
    const revision = String(read.index);
    this.listings.remember(prefix, options.startsWith, revision, read.snapshot);
    return { entries: read.entries, revision };
  }

  /**
   * Reads every key of the range (below `prefix`, and starting with `startsWith` there) with the
   * index of the read: at once and linearizable, or as a blocking query that returns when the
   * range's index passes `after.index`. Consul matches a recursive read's path as plain text, so
   * the range is the path `<prefix>/<startsWith>`, and its index is the highest one of that text
   * prefix: writes to other keys below `prefix` do not wake it.
   *
   * A watch's read passes the state it holds (`previous`) and gets only the snapshot (`entries` stays
   * empty): every answer is the whole prefix (2 000 endpoint records at 100 hosts × 20, for one
   * change), and an entry whose `ModifyIndex` is the one `previous` holds is taken from it as it is —
   * no decoding or copy of its value, no key check, no new object — so what a read costs beyond Consul's
   * own JSON is the entries that changed. The range is read without the consul client
   * ({@link ConsulTransport.getJson}), which would decode every value of every answer (measured:
   * `npm run bench -- watch-cost` and `events --backend consul`, docs/scale.md).
   */
  private async readPrefix(
    prefix: string,
    startsWith: string | undefined,
    options: { signal?: AbortSignal | undefined; after?: bigint; previous?: Snapshot },
  ): Promise<PrefixRead> {
    const blocking = options.after !== undefined;
    const path = `${this.prefix}/${rangeStart(prefix, startsWith)}`;
    const reply = await this.request<ConsulEntry[]>(
      blocking ? 'watch' : 'list',
      // without the consul client: it decodes every value of the answer, and a watch needs only the changed ones
      (consul, ctx) =>
        this.transport.getJson(
          consul,
          `/kv/${encodeURIComponent(path)}?recurse=true&${blocking ? `index=${options.after}&wait=${WATCH_WAIT_S}s` : 'consistent=true'}`,
          ctx,
        ),
      {
        signal: options.signal,
        idempotent: true,
        ...(blocking ? { timeoutMs: WATCH_WAIT_S * 1000 * (1 + WATCH_JITTER_FRACTION) + this.timeoutMs, blocking: true } : {}),
      },
    );
    if (reply.index === undefined) throw new StoreProtocolError(this.url, 'a KV listing came without X-Consul-Index');
    if (reply.body !== undefined && !Array.isArray(reply.body)) throw new StoreProtocolError(this.url, `a KV listing of ${path} came as ${typeof reply.body}, not a JSON list`);
    if (reply.headers['x-consul-default-acl-policy'] === 'deny' && !this.readablePaths.has(path)) await this.probeRead(path, options.signal);
    const entries: KVEntry[] = [];
    const snapshot = new Map<string, SnapshotEntry>();
    const previous = options.previous;
    const serverPrefix = `${this.prefix}/`;
    for (const item of reply.body ?? []) {
      if (previous) {
        // the same key (so it passed the key check before) at the same index: the entry held
        const key = item.Key.startsWith(serverPrefix) ? item.Key.slice(serverPrefix.length) : undefined;
        const held = key === undefined ? undefined : (previous.get(key) as HeldEntry | undefined);
        if (held && Number(held.order) === item.ModifyIndex) {
          // the key string the entry was first stored under: the new one (and Consul's text it is cut from) is let go at once
          snapshot.set(held.key ?? key!, held);
          continue;
        }
      }
      const entry = this.toEntry(item);
      if (!entry) continue;
      if (!previous) entries.push(entry);
      const held: HeldEntry = { key: entry.key, value: entry.value, revision: entry.revision, order: BigInt(item.ModifyIndex) };
      snapshot.set(entry.key, held);
    }
    if (!previous) entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    // Consul never reports index 0 for a served read; treat it as 1 like its own clients do
    return { index: reply.index > 0n ? reply.index : 1n, entries, snapshot };
  }

  /**
   * Consul drops the keys a token may not read from a recursive listing without saying so (an
   * empty 404, not a 403), so a wrong token would look like an empty store. Where ACLs deny by
   * default, a plain read of the listed path itself, which does answer 403, proves the token may read it.
   */
  private async probeRead(path: string, signal: AbortSignal | undefined): Promise<void> {
    await this.request('list', (consul, ctx) => consul.kv.get(kvGetOptions({ key: path, consistent: true, buffer: true, ctx })), {
      signal,
      idempotent: true,
    });
    this.readablePaths.add(path);
  }

  // ---- writes ----

  async put(key: string, value: Uint8Array, options: PutOptions = {}): Promise<Revision> {
    const r = await this.transact('put', [{ op: 'put', key, value, ...(options.lease ? { lease: options.lease } : {}) }], options.signal);
    if (!r.ok) throw new StoreProtocolError(this.url, `an unconditional put of ${key} was refused: ${r.what}`);
    return r.revisions[0]!;
  }

  async putIf(key: string, value: Uint8Array, condition: PutCondition, options: PutOptions = {}): Promise<CasResult> {
    const r = await this.transact(
      'putIf',
      [{ op: 'put', key, value, if: condition, ...(options.lease ? { lease: options.lease } : {}) }],
      options.signal,
    );
    if (r.ok) return { ok: true, revision: r.revisions[0]! };
    return { ok: false, reason: condition.absent ? 'exists' : isMissingKeyError(r.what) ? 'missing' : 'modified' };
  }

  async delete(key: string, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    validateKey(key);
    this.assertOpen();
    // `get` fails the transaction when the key is absent, which is exactly "did not exist"
    const Key = this.serverKey(key);
    const r = await this.sendTxn('delete', [{ KV: { Verb: 'get', Key } }, { KV: { Verb: 'delete', Key } }], options.signal);
    return r.status === 200;
  }

  /** On success the revision is the one the key had: Consul does not report the index of a delete. */
  async deleteIf(key: string, revision: Revision, options: { signal?: AbortSignal } = {}): Promise<CasResult> {
    const r = await this.transact('deleteIf', [{ op: 'delete', key, if: { revision } }], options.signal);
    if (r.ok) return { ok: true, revision: r.index };
    return { ok: false, reason: isMissingKeyError(r.what) ? 'missing' : 'modified' };
  }

  async txn(ops: readonly TxnOp[], options: { signal?: AbortSignal } = {}): Promise<TxnResult> {
    const r = await this.transact('txn', ops, options.signal);
    if (r.ok) return { ok: true, revisions: r.revisions };
    return { ok: false, failedKey: ops[r.op]!.key };
  }

  /**
   * Validates, compiles and sends store operations as one transaction. A failed condition is a
   * value; a `lock` refused for the lease's session means the lease is gone.
   */
  private async transact(
    what: string,
    ops: readonly TxnOp[],
    signal: AbortSignal | undefined,
  ): Promise<{ ok: true; index: Revision; revisions: Array<Revision | undefined> } | { ok: false; op: number; what: string }> {
    for (const op of ops) validateKey(op.key);
    this.assertOpen();
    if (ops.length > MAX_TXN_OPS) {
      throw new RangeError(`a Consul transaction may hold at most ${MAX_TXN_OPS} operations, got ${ops.length}`);
    }
    for (const op of ops) {
      if (op.op === 'put') checkValueSize(op.key, op.value, MAX_VALUE_BYTES);
    }
    if (ops.length === 0) return { ok: true, index: '0', revisions: [] };
    const compiled = compileTxn(this.url, ops, (key) => this.serverKey(key));
    const reply = await this.sendTxn(what, compiled.ops, signal, ops);
    if (reply.status === 200) {
      const index = txnRevision(this.url, reply.body);
      return { ok: true, index: index ?? '0', revisions: ops.map((op) => (op.op === 'put' ? index : undefined)) };
    }
    const failure = txnFailure(this.url, compiled, reply.body);
    const op = ops[failure.op]!;
    if (isAclDenial(failure.what)) throw this.transport.denied(what, failure.what);
    if (failure.role === 'condition') return { ok: false, op: failure.op, what: failure.what };
    if (failure.role === 'write' && op.op === 'put' && op.lease) throw new LeaseLostError(op.lease.id, `Consul refused to bind ${op.key} to it: ${failure.what}`);
    throw new StoreProtocolError(this.url, `${what}: Consul rolled the transaction back at ${op.key}: ${failure.what}`);
  }

  /** Sends `/v1/txn`; resolves with the body for 200 (applied) and 409 (rolled back). */
  private async sendTxn(
    what: string,
    ops: ConsulKvOp[],
    signal: AbortSignal | undefined,
    storeOps?: readonly TxnOp[],
  ): Promise<{ status: 200 | 409; body: ConsulTxnBody | undefined }> {
    const bytes = Buffer.byteLength(JSON.stringify(ops));
    if (bytes > TXN_MAX_REQUEST_BYTES) {
      const largest = [...(storeOps ?? [])].sort((a, b) => size(b) - size(a))[0];
      throw new ValueTooLargeError(largest?.key ?? ops[0]!.KV.Key, bytes, TXN_MAX_REQUEST_BYTES);
    }
    try {
      const reply = await this.request<ConsulTxnBody>(
        what,
        // the client's operation types have lower-case fields Consul does not read; it sends the array as is
        (consul, ctx) => consul.transaction.create(ops as unknown as Parameters<typeof consul.transaction.create>[0], { ctx } as never),
        { signal, raw: true },
      );
      return { status: 200, body: reply.body };
    } catch (err) {
      if (err instanceof ConsulHttpError && err.status === 409) return { status: 409, body: err.body as ConsulTxnBody };
      throw this.transport.fail(what, err);
    }
  }

  // ---- watches ----

  watch(prefix: string, fromRevision: Revision, options: WatchOptions = {}): AsyncIterable<WatchBatch> {
    validatePrefix(prefix);
    validateStartsWith(options.startsWith);
    this.assertOpen();
    const stop = new AbortController();
    const channel: WatchChannel = new WatchChannel(() => {
      stop.abort();
      this.watches.delete(channel);
    }, options.signal);
    this.watches.add(channel);
    void this.runWatch(prefix, options.startsWith, fromRevision, channel, stop.signal).catch((err: unknown) => channel.fail(err));
    return channel;
  }

  private async runWatch(
    prefix: string,
    startsWith: string | undefined,
    fromRevision: Revision,
    channel: WatchChannel,
    signal: AbortSignal,
  ): Promise<void> {
    if (!/^\d{1,19}$/.test(fromRevision)) {
      channel.fail(new WatchResetError(prefix, `revision "${fromRevision}" was not made by the Consul store`));
      return;
    }
    let index = BigInt(fromRevision);
    let state = this.listings.recall(prefix, startsWith, fromRevision) ?? this.batches.recall(prefix, startsWith, fromRevision);
    let failingSince: number | undefined;
    let attempt = 0;
    let lastChangeAt: number | undefined;
    // The first read is at once: the revision may come from an earlier life of the server (restarted
    // without its data, so its index is lower now), and a blocking read waits for the index to pass
    // it — up to a whole wait of minutes — where an answer at once shows the index went back.
    let first = true;
    while (!channel.isClosed) {
      let read: PrefixRead;
      try {
        // after a failure, read at once too: a blocking read would hide a dead server for a whole wait
        const blocking = state !== undefined && failingSince === undefined && !first;
        read = await this.readPrefix(prefix, startsWith, { signal, ...(blocking ? { after: index } : {}), ...(state ? { previous: state } : {}) });
      } catch (err) {
        if (channel.isClosed) return;
        if (this.closed) return channel.fail(new StoreClosedError(this.url));
        // cut short because another call found the server unreachable: the same read again, on another
        // connection (it fails at once if the server is gone; on a slow one it costs an index check)
        if (err instanceof BlockingReadInterrupted) continue;
        if (!(err instanceof StoreUnavailableError)) return channel.fail(err);
        failingSince ??= Date.now();
        if (Date.now() - failingSince > WATCH_RECONNECT_BUDGET_MS) {
          return channel.fail(new WatchResetError(prefix, `the server could not be read for ${WATCH_RECONNECT_BUDGET_MS} ms: ${err.message}`, { cause: err }));
        }
        this.log?.debug({ err, prefix, startsWith, attempt }, 'watch read failed, retrying');
        await sleep(backoffDelay(attempt++, WATCH_RETRY_BASE_MS, WATCH_RETRY_CAP_MS), signal).catch(() => undefined);
        continue;
      }
      failingSince = undefined;
      attempt = 0;
      first = false;
      if (channel.isClosed) return;
      if (!state) {
        // no remembered state for this revision: usable only if nothing below the prefix changed since
        if (read.index !== index) {
          return channel.fail(
            new WatchResetError(prefix, `no state is known for revision ${fromRevision} and the prefix has changed since (now at ${read.index})`),
          );
        }
        state = read.snapshot;
        continue;
      }
      const events = diffSnapshots(state, read.snapshot, String(read.index), read.index);
      const regressed = firstRegression(state, read.snapshot);
      if (regressed !== undefined) {
        return channel.fail(new WatchResetError(prefix, `key ${regressed} went back to an older revision (restored from a snapshot?)`));
      }
      if (read.index < index) {
        // Reaping tombstones (after tombstone_ttl) also lowers a prefix's index; with the same
        // state below the prefix nothing was lost. Different state means the data went back.
        if (events.length > 0) {
          return channel.fail(
            new WatchResetError(prefix, `the server's index went backwards from ${index} to ${read.index} and the data changed (restarted without its data or restored from a snapshot)`),
          );
        }
        this.log?.debug({ prefix, startsWith, from: String(index), to: String(read.index) }, 'prefix index went backwards with the same state, going on');
      }
      state = read.snapshot;
      index = read.index;
      // every answer is paid for, changed or not: the server sent the whole range either way
      let pause = Math.min(WATCH_READ_MAX_PAUSE_MS, this.watchReads.spend(read.snapshot.size));
      if (events.length > 0) {
        this.batches.remember(prefix, startsWith, String(index), state);
        channel.push({ events, revision: String(index) });
        const now = Date.now();
        const burst = lastChangeAt !== undefined && now - lastChangeAt < WATCH_MIN_INTERVAL_MS;
        lastChangeAt = now;
        if (burst) pause = Math.max(pause, WATCH_MIN_INTERVAL_MS);
      }
      if (pause > 0) {
        if (pause > WATCH_MIN_INTERVAL_MS) this.log?.debug({ prefix, startsWith, pauseMs: pause }, 'watch reads over budget (kv.watchrate): next read waits');
        await sleep(pause, signal).catch(() => undefined);
      }
    }
  }

  // ---- leases ----

  async grantLease(ttlSeconds: number, options: { signal?: AbortSignal } = {}): Promise<Lease> {
    checkLeaseTtl(ttlSeconds);
    this.assertOpen();
    let ttlMs = Math.max(this.sessionTtlMinMs, Math.round((ttlSeconds * 1000) / SESSION_TTL_DIVISOR));
    let id: string;
    try {
      id = await this.createSession(ttlMs, options.signal);
    } catch (err) {
      const bounds = err instanceof ConsulHttpError ? sessionTtlBounds(err.text) : undefined;
      if (!bounds) throw this.transport.fail('grantLease', err);
      const clamped = Math.min(bounds.maxMs, Math.max(bounds.minMs, ttlMs));
      if (clamped === ttlMs) throw this.transport.fail('grantLease', err);
      this.log?.info({ requestedMs: ttlMs, ttlMs: clamped }, 'Consul refused the session TTL; using the nearest it accepts');
      this.sessionTtlMinMs = bounds.minMs;
      ttlMs = clamped;
      try {
        id = await this.createSession(ttlMs, options.signal);
      } catch (again) {
        throw this.transport.fail('grantLease', again);
      }
    }
    if (this.closed) {
      // closed while the session was being created: nobody will renew it, it expires by TTL
      throw new StoreClosedError(this.url);
    }
    const lease = new ConsulLease(
      id,
      ttlMs,
      {
        renew: (sid, timeoutMs) => this.renewSession(sid, timeoutMs),
        destroy: (sid) => this.destroySession(sid),
        forget: (l) => this.leases.delete(l),
      },
      this.log,
    );
    this.leases.add(lease);
    return lease;
  }

  private async createSession(ttlMs: number, signal: AbortSignal | undefined): Promise<string> {
    const reply = await this.request<{ ID?: string }>(
      'grantLease',
      (consul, ctx) =>
        consul.session.create({
          name: SESSION_NAME,
          ttl: `${ttlMs}ms`,
          behavior: 'delete',
          lockdelay: '0s',
          checks: [],
          ctx,
        } as Parameters<typeof consul.session.create>[0]),
      { signal, raw: true },
    );
    const id = reply.body?.ID;
    if (!id) throw new StoreProtocolError(this.url, `session create answered without an ID: ${JSON.stringify(reply.body)}`);
    return id;
  }

  private async renewSession(id: string, timeoutMs: number): Promise<boolean> {
    try {
      await this.request('renew lease', (consul, ctx) => consul.session.renew({ id, ctx } as { id: string }), {
        timeoutMs,
        raw: true,
      });
      return true;
    } catch (err) {
      if (err instanceof ConsulHttpError && err.status === 404) return false;
      throw this.transport.fail('renew lease', err);
    }
  }

  private async destroySession(id: string): Promise<void> {
    await this.request('revoke lease', (consul, ctx) => consul.session.destroy({ id, ctx } as { id: string }));
  }

  // ---- lifecycle ----

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const lease of [...this.leases]) lease.end('closed');
    for (const channel of [...this.watches]) channel.fail(new StoreClosedError(this.url));
    this.watches.clear();
    this.transport.close();
  }

  // ---- helpers ----

  private assertOpen(): void {
    if (this.closed) throw new StoreClosedError(this.url);
  }

  private serverKey(key: string): string {
    return `${this.prefix}/${key}`;
  }

  /** A Consul entry as a store entry; undefined for keys no kvnet client could have written. */
  private toEntry(item: ConsulEntry): KVEntry | undefined {
    const key = item.Key.slice(this.prefix.length + 1);
    if (!item.Key.startsWith(`${this.prefix}/`) || !isValidKey(key)) {
      this.log?.debug({ key: item.Key }, 'ignoring a Consul key outside the key rules');
      return undefined;
    }
    const value = typeof item.Value === 'string' ? new Uint8Array(Buffer.from(item.Value, 'base64')) : item.Value ? new Uint8Array(item.Value) : new Uint8Array(0);
    return { key, value, revision: String(item.ModifyIndex), ...(item.Session ? { leaseId: item.Session } : {}) };
  }

  /**
   * One request through the transport. HTTP errors become store errors unless `raw` (the caller
   * handles the statuses it expects: 409 for a rolled-back transaction, 404 for a gone session).
   */
  private async request<T>(
    what: string,
    send: Parameters<ConsulTransport['call']>[1],
    options: { signal?: AbortSignal | undefined; timeoutMs?: number; idempotent?: boolean; raw?: boolean; blocking?: boolean } = {},
  ): Promise<ConsulReply<T>> {
    try {
      return await this.transport.call<T>(what, send, options);
    } catch (err) {
      if (options.raw) throw err;
      throw this.transport.fail(what, err);
    }
  }
}

/** Options the client passes on as query parameters but leaves out of its types (`index`, `wait`, `consistent`, `ctx`, `buffer`). */
function kvGetOptions(options: {
  key: string;
  recurse?: boolean;
  consistent?: boolean;
  buffer: boolean;
  index?: string;
  wait?: string;
  ctx: unknown;
}): { key: string } {
  return options;
}

function isValidKey(key: string): boolean {
  try {
    validateKey(key);
    return true;
  } catch {
    return false;
  }
}

/** The first key whose index in `next` is lower than in `prev`: Consul's data went back in time. */
function firstRegression(prev: Snapshot, next: Snapshot): string | undefined {
  for (const [key, entry] of next) {
    const before = prev.get(key);
    if (before && entry.order < before.order) return key;
  }
  return undefined;
}

/**
 * Consul refuses a TTL outside its bounds with "Invalid Session TTL '500000000', must be between
 * [1s=24h0m0s]" (HTTP 500); the bounds are Go durations.
 */
export function sessionTtlBounds(text: string): { minMs: number; maxMs: number } | undefined {
  const m = /Invalid Session TTL .*must be between \[([^=\]]+)=([^\]]+)\]/.exec(text);
  if (!m) return undefined;
  const minMs = parseGoDurationMs(m[1]!);
  const maxMs = parseGoDurationMs(m[2]!);
  return minMs !== undefined && maxMs !== undefined ? { minMs, maxMs } : undefined;
}

const GO_DURATION_UNITS_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** Parses a Go duration such as `1s`, `1m30s` or `24h0m0s` into milliseconds. */
export function parseGoDurationMs(text: string): number | undefined {
  const parts = [...text.trim().matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text.trim()) return undefined;
  return Math.round(parts.reduce((ms, p) => ms + Number(p[1]) * GO_DURATION_UNITS_MS[p[2]!]!, 0));
}

function size(op: TxnOp): number {
  return op.op === 'put' ? op.value.byteLength : 0;
}
