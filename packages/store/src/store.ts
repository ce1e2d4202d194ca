/**
 * The KV store contract. Every backend (Consul, etcd, ZooKeeper, embedded SQLite) implements
 * {@link KVStore} with the same observable behaviour, proven by one compliance suite
 * (`test/compliance.ts`) run unchanged against a real server of each kind. Callers never branch on
 * which backend they hold; a backend's quirks (Consul's TTL lower bound, ZooKeeper's one-shot
 * watches, etcd compaction) are handled inside it.
 *
 * Keys are `/`-separated paths relative to the store's prefix (the path part of the URL), e.g.
 * `networks/4f1c…`. Segments use the characters `A–Z a–z 0–9 . _ ~ : @ + = , -`, are at most 255
 * bytes, and are never empty, `.` or `..`; see {@link validateKey}. Values are opaque bytes.
 */

import type { Logger } from 'pino';

/**
 * An opaque version token. Compare two revisions only for equality; pass them back to conditional
 * writes and to {@link KVStore.watch}. Each backend encodes its own notion (etcd mod_revision,
 * Consul ModifyIndex, ZooKeeper zxid and data version, the local log sequence).
 */
export type Revision = string;

/** One stored key. */
export interface KVEntry {
  readonly key: string;
  readonly value: Uint8Array;
  /** Changes on every write of this key; what {@link PutCondition.revision} compares against. */
  readonly revision: Revision;
  /** Set when the key is bound to a lease (ephemeral key). */
  readonly leaseId?: string;
}

/** The result of a listing: every key under the prefix at one consistent point in time. */
export interface KVListing {
  readonly entries: KVEntry[];
  /** Watch from this revision to see every change made after the listing. */
  readonly revision: Revision;
}

/** Precondition for a conditional write or delete. */
export type PutCondition =
  /** The key must not exist (create-only). */
  | { readonly absent: true; readonly revision?: undefined }
  /** The key must exist with exactly this revision (compare-and-swap). */
  | { readonly revision: Revision; readonly absent?: undefined };

/** The outcome of a conditional operation. A lost race is a value, not an exception. */
export type CasResult =
  | { readonly ok: true; readonly revision: Revision }
  /**
   * The condition did not hold. `current` is the key as it is now, when the backend returns it
   * cheaply (undefined when the key is absent or the backend did not say).
   */
  | { readonly ok: false; readonly reason: 'exists' | 'modified' | 'missing'; readonly current?: KVEntry };

export interface PutOptions {
  /** Bind the key to this lease: it disappears when the lease dies. Re-putting rebinds it. */
  readonly lease?: Lease;
  readonly signal?: AbortSignal;
}

/** One operation of a {@link KVStore.txn}; all succeed together or none is applied. */
export type TxnOp =
  | {
      readonly op: 'put';
      readonly key: string;
      readonly value: Uint8Array;
      readonly if?: PutCondition;
      readonly lease?: Lease;
    }
  | { readonly op: 'delete'; readonly key: string; readonly if?: { readonly revision: Revision; readonly absent?: undefined } }
  /** Assert without writing: `absent` or an exact revision. */
  | { readonly op: 'check'; readonly key: string; readonly if: PutCondition };

export type TxnResult =
  /** `revisions[i]` is the new revision of op i for puts, undefined for deletes and checks. */
  | { readonly ok: true; readonly revisions: ReadonlyArray<Revision | undefined> }
  /** Some condition did not hold; nothing was written. `failedKey` when the backend can tell. */
  | { readonly ok: false; readonly failedKey?: string };

/** A change seen by a watch. */
export type WatchEvent =
  | { readonly type: 'put'; readonly key: string; readonly value: Uint8Array; readonly revision: Revision }
  | { readonly type: 'delete'; readonly key: string; readonly revision: Revision };

/** Changes delivered together, in order; `revision` is where the watch now stands. */
export interface WatchBatch {
  readonly events: readonly WatchEvent[];
  readonly revision: Revision;
}

/** Options of {@link KVStore.list}. */
export interface ListOptions {
  readonly signal?: AbortSignal;
  /**
   * Only keys whose path below `prefix/` starts with this text (for the prefix `''`: whose whole
   * key starts with it). Unlike the prefix it may end inside a segment: `list('net/a', {startsWith:
   * 'x'})` lists `net/a/x`, `net/a/xy` and `net/a/x/deeper`, but not `net/a/y`, `net/ax` nor `net/a`.
   * It splits one large range into smaller ones, e.g. the endpoints of one network by the first hex
   * digit of their id. Non-empty, made of segment characters only (no `/`), at most 255 bytes; any
   * other value is refused with {@link InvalidKeyError} before anything is sent. Undefined: every
   * key below `prefix`.
   */
  readonly startsWith?: string;
}

export interface WatchOptions {
  /** Ends the watch; the iterator then finishes without an error. */
  readonly signal?: AbortSignal;
  /**
   * Watch only the keys {@link ListOptions.startsWith} would list. The watch's `fromRevision` must
   * come from a listing (or an earlier batch) of the same prefix with the same `startsWith`.
   */
  readonly startsWith?: string;
}

/**
 * A lease (etcd lease, Consul session, ZooKeeper session, local TTL row). Created by
 * {@link KVStore.grantLease}; kept alive automatically until {@link Lease.revoke} or
 * {@link Lease.release}.
 */
export interface Lease {
  readonly id: string;
  /** The TTL the backend actually applies, in milliseconds (backends clamp to their own limits). */
  readonly ttlMs: number;
  /**
   * Extra time, in milliseconds, the backend may take beyond `ttlMs` before it removes the keys of
   * a lease that stopped being renewed (Consul invalidates a session between TTL and 2×TTL).
   */
  readonly expiryGraceMs: number;
  /** Resolves (never rejects) when the lease is known to be gone; keys bound to it are deleted. */
  readonly lost: Promise<LeaseLostReason>;
  /** Ends the lease now; its keys are deleted by the store. Idempotent. */
  revoke(): Promise<void>;
  /**
   * Stops renewing without revoking: the keys live until the TTL runs out. This is what a process
   * does when it restarts and wants its ephemeral keys to survive a short absence.
   */
  release(): Promise<void>;
}

export type LeaseLostReason = 'expired' | 'revoked' | 'released' | 'closed';

/** What a backend guarantees beyond the common contract, so tests and callers can state it. */
export interface StoreCapabilities {
  /**
   * True when a watch delivers every individual write, including several writes to one key.
   * False when the backend reports state (Consul blocking queries, ZooKeeper watches): then several
   * writes to one key between two reads arrive as one event carrying the newest value. Per key,
   * delivered revisions always advance; no key's final state is ever missed.
   */
  readonly exactHistory: boolean;
  /** Largest value accepted, in bytes. */
  readonly maxValueBytes: number;
  /** Largest number of operations in one {@link KVStore.txn}. */
  readonly maxTxnOps: number;
  /**
   * True when every watch answer carries every key of the watched range, not only the changes
   * (Consul's blocking queries): one change then costs each watcher of the range O(keys in the
   * range) in transfer and comparison. Callers that watch many keys split the range with
   * {@link WatchOptions.startsWith} so that a change costs only its part.
   */
  readonly watchReadsWholeRange: boolean;
  /**
   * True when a watch of a range that holds no key is answered — with nothing changed — by writes to
   * keys outside it, until a key exists at the range's path without its last `/` or below it
   * (`<prefix>` for a watch of `<prefix>/`). Consul: a blocking query on a prefix with no keys reports
   * the index of the whole KV table and waits on the nearest part of its key tree that exists, so
   * with nothing near the prefix every write anywhere answers it (measured: 255 bytes per write, per
   * watcher). A caller that keeps such a watch open — a node's tombstones, usually none — writes one
   * key at that path once (an anchor, outside the range) so the watch waits for its own keys.
   */
  readonly emptyRangeWatchWakes?: boolean;
  /**
   * How many watches one client should hold open at once, when the backend has a limit (undefined:
   * none). Consul: each watch is a blocking query on an HTTP connection of its own, and Consul
   * refuses more than `limits.http_max_conns_per_client` connections from one address (200 by
   * default); the store asks callers to stay below that (`kv.maxwatches`, default
   * {@link DEFAULT_CONSUL_MAX_WATCHES}), leaving room for its other calls.
   */
  readonly maxWatches?: number;
}

/** Consul's default `limits.http_max_conns_per_client` (200) less room for a client's other calls. */
export const DEFAULT_CONSUL_MAX_WATCHES = 160;

/**
 * The contract. Every call that talks to the server rejects with {@link StoreUnavailableError}
 * (naming the URL) when the server does not answer within the store's `timeoutMs`, and with
 * {@link InvalidKeyError} before anything is sent when a key, prefix or `startsWith` is malformed.
 */
export interface KVStore {
  /** The store URL with any credentials removed; safe to log and to put into messages. */
  readonly url: string;
  readonly backend: StoreBackendName;
  readonly capabilities: StoreCapabilities;

  /** Reads one key; undefined when absent. Linearizable (reads the latest committed value). */
  get(key: string, options?: { signal?: AbortSignal }): Promise<KVEntry | undefined>;

  /**
   * Every key strictly below `prefix` (`net/a` lists `net/a/x` but not `net/ab` nor `net/a`
   * itself), sorted by key, from one consistent point in time. `''` lists the whole store. With
   * {@link ListOptions.startsWith}, only the keys whose path below `prefix/` starts with it.
   */
  list(prefix: string, options?: ListOptions): Promise<KVListing>;

  /** Unconditional write; returns the new revision. */
  put(key: string, value: Uint8Array, options?: PutOptions): Promise<Revision>;

  /** Conditional write: create-only (`{absent: true}`) or compare-and-swap (`{revision}`). */
  putIf(key: string, value: Uint8Array, condition: PutCondition, options?: PutOptions): Promise<CasResult>;

  /** Unconditional delete; resolves true when the key existed. */
  delete(key: string, options?: { signal?: AbortSignal }): Promise<boolean>;

  /** Deletes only if the key still has `revision`. */
  deleteIf(key: string, revision: Revision, options?: { signal?: AbortSignal }): Promise<CasResult>;

  /** Several puts, deletes and checks applied atomically (at most `capabilities.maxTxnOps`). */
  txn(ops: readonly TxnOp[], options?: { signal?: AbortSignal }): Promise<TxnResult>;

  /**
   * Every change below `prefix` made after `fromRevision` (a revision from {@link list} of the
   * same prefix and the same {@link WatchOptions.startsWith}, or from an earlier batch of such a
   * watch), in order, until the signal aborts. With `startsWith`, only changes of the keys that
   * listing covers. When the backend cannot continue without a possible gap the iterator throws
   * {@link WatchResetError}; the caller lists again and starts a new watch. A watch never ends
   * silently.
   */
  watch(prefix: string, fromRevision: Revision, options?: WatchOptions): AsyncIterable<WatchBatch>;

  /** A new lease with the requested TTL in seconds (backends clamp; see {@link Lease.ttlMs}). */
  grantLease(ttlSeconds: number, options?: { signal?: AbortSignal }): Promise<Lease>;

  /**
   * Releases every client, watch and timer; afterwards nothing keeps the process alive. Leases are
   * released, not revoked (their keys expire by TTL). Idempotent.
   */
  close(): Promise<void>;
}

export type StoreBackendName = 'consul' | 'etcd' | 'zookeeper' | 'local';

/** Options common to every backend; backend-specific ones come from the URL and {@link StoreTlsOptions}. */
export interface StoreOptions {
  /**
   * Per-call deadline in milliseconds: a call that gets no answer in this time fails with
   * {@link StoreUnavailableError}. Default {@link DEFAULT_TIMEOUT_MS}.
   */
  readonly timeoutMs?: number;
  readonly logger?: Logger;
  readonly tls?: StoreTlsOptions;
  readonly auth?: StoreAuthOptions;
  /** Consul: {@link StoreCapabilities.maxWatches} (`kv.maxwatches`); other backends have no such limit. */
  readonly maxWatches?: number;
  /**
   * Consul: keys per second this client's watches read at most once the first seconds' worth is spent
   * (`kv.watchrate`, default 500): a watch answer carries its whole range, and during a burst of
   * writes the answers of every client add up at the server. Other backends deliver only changes.
   */
  readonly watchReadRate?: number;
}

/** Paths to PEM files (read at open). Setting any of them switches etcd and Consul to https. */
export interface StoreTlsOptions {
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  /** Skip server certificate verification (tests and emergencies only). */
  readonly insecureSkipVerify?: boolean;
}

export interface StoreAuthOptions {
  /** Consul ACL token. */
  readonly token?: string;
  /** etcd user/password, or ZooKeeper digest `user:password`. */
  readonly username?: string;
  readonly password?: string;
}

export const DEFAULT_TIMEOUT_MS = 5_000;
