/**
 * The etcd v3 backend (`etcd://h1:2379[,h2:2379]/prefix`), on the `etcd3` client's gRPC layer.
 *
 * - Keys live under `<prefix>/` on the server (see {@link KeyLayout}). A `startsWith` range is native:
 *   listings and watches ask for the key range from `<prefix>/<startsWith>` to its prefix end.
 * - Revisions are etcd's: a key's revision is its `mod_revision`, a listing's is the response
 *   header revision, and `watch(prefix, R)` asks etcd for `start_revision = R + 1`. etcd keeps every
 *   revision until it is compacted, so watches have exact history. A listing is read in pages of
 *   {@link LIST_PAGE_KEYS} keys, all at the first page's revision (one consistent snapshot).
 * - Conditional writes are one Txn each: `create_revision == 0` for create-only, `mod_revision == R`
 *   for compare-and-swap. The failure branch reads the keys back, so a lost race comes with the
 *   current entry (and `txn()` names the failed key) without another round trip.
 * - A request that may have reached the server is never re-sent (`etcd-client.ts`): a write whose
 *   answer is lost fails with StoreUnavailableError instead of reporting its own commit as a lost
 *   race. Reads are retried inside the deadline.
 * - Watches: `etcd-watch.ts`. Leases: `etcd-lease.ts`; a put with another lease rebinds the key in
 *   place (watchers see a put, never a delete).
 */

import {
  CompareResult,
  CompareTarget,
  EtcdLeaseInvalidError,
  type Etcd3,
  type ICompare,
  type IKeyValue,
  type IRequestOp,
  type ITxnResponse,
} from 'etcd3';
import type { Logger } from 'pino';
import { backendSettings, checkLeaseTtl, checkValueSize } from './backend-common.ts';
import { InvalidKeyError, LeaseLostError, StoreClosedError, StoreProtocolError, TxnTooLargeError, WatchResetError } from './errors.ts';
import { EtcdRpc, KeyLayout, createEtcdClient } from './etcd-client.ts';
import { EtcdLease } from './etcd-lease.ts';
import { EtcdWatch } from './etcd-watch.ts';
import { validateKey, validatePrefix, validateStartsWith } from './keys.ts';
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
import { WatchChannel } from './watch-channel.ts';

/** etcd's default `--max-request-bytes` (1.5 MiB); larger requests are refused by the server. */
export const ETCD_MAX_REQUEST_BYTES = 1_572_864;
/** Largest value: 1 MiB leaves room under {@link ETCD_MAX_REQUEST_BYTES} for key, prefix and txn framing. */
export const MAX_VALUE_BYTES = 1_048_576;
/** etcd's default `--max-txn-ops`. */
export const MAX_TXN_OPS = 128;
/** Protobuf framing per txn operation and compare, rounded up, for the request size estimate. */
const TXN_OVERHEAD_BYTES_PER_OP = 32;
/** Headroom below {@link ETCD_MAX_REQUEST_BYTES} for the raft envelope and auth metadata. */
const REQUEST_MARGIN_BYTES = 64 * 1024;
/** Keys per page of a listing; later pages read at the first page's revision. */
export const LIST_PAGE_KEYS = 500;
/** A listing whose revision is compacted between two pages starts over at most this often. */
export const LIST_MAX_RESTARTS = 3;
/** etcd's `MaxLeaseTTL`. */
export const LEASE_MAX_TTL_S = 9_000_000_000;
/** No key has this mod_revision, so a malformed revision never matches (`0` would match an absent key). */
const NEVER_REVISION = '-1';

const REVISION = /^[1-9][0-9]*$/;

/** Opens an etcd store; nothing is sent to the server until the first call. */
export async function openEtcdStore(address: StoreAddress, options: StoreOptions): Promise<KVStore> {
  return new EtcdStore(address, options);
}

class EtcdStore implements KVStore {
  readonly backend = 'etcd' as const;
  readonly url: string;
  readonly capabilities: StoreCapabilities = {
    exactHistory: true,
    maxValueBytes: MAX_VALUE_BYTES,
    maxTxnOps: MAX_TXN_OPS,
    watchReadsWholeRange: false,
  };
  private readonly client: Etcd3;
  private readonly rpc: EtcdRpc;
  private readonly layout: KeyLayout;
  private readonly log: Logger | undefined;
  private readonly watches = new Set<EtcdWatch>();
  private readonly leases = new Set<EtcdLease>();
  private closing: Promise<void> | undefined;

  constructor(address: StoreAddress, options: StoreOptions) {
    const { url, timeoutMs, log } = backendSettings(address, options);
    this.url = url;
    this.log = log;
    this.client = createEtcdClient(address, options, timeoutMs);
    this.rpc = new EtcdRpc(this.url, timeoutMs, this.client, this.log);
    this.layout = new KeyLayout(address.prefix, this.url);
  }

  async get(key: string, options?: { signal?: AbortSignal }): Promise<KVEntry | undefined> {
    validateKey(key);
    this.assertOpen();
    const res = await this.rpc.call(
      `get ${JSON.stringify(key)}`,
      'read',
      (o) => this.client.kv.range({ key: this.layout.key(key) }, o),
      options?.signal,
    );
    const kv = res.kvs[0];
    return kv ? this.entry(kv) : undefined;
  }

  async list(prefix: string, options?: ListOptions): Promise<KVListing> {
    validatePrefix(prefix);
    validateStartsWith(options?.startsWith);
    this.assertOpen();
    for (let restart = 0; ; restart++) {
      try {
        return await this.listPages(prefix, options?.startsWith, options?.signal);
      } catch (err) {
        const compacted = /required revision has been compacted/.test(String((err as { cause?: unknown }).cause));
        if (!compacted || restart >= LIST_MAX_RESTARTS) throw err;
        this.log?.debug({ prefix, restart }, 'listing revision compacted between pages, listing again');
      }
    }
  }

  private async listPages(prefix: string, startsWith: string | undefined, signal: AbortSignal | undefined): Promise<KVListing> {
    const range = this.layout.range(prefix, startsWith);
    const entries: KVEntry[] = [];
    let revision: string | undefined;
    let from = range.key;
    for (;;) {
      const res = await this.rpc.call(
        `list ${JSON.stringify(prefix)}`,
        'read',
        (o) =>
          this.client.kv.range(
            { key: from, range_end: range.range_end, limit: LIST_PAGE_KEYS, ...(revision !== undefined ? { revision } : {}) },
            o,
          ),
        signal,
      );
      revision ??= res.header.revision;
      for (const kv of res.kvs) entries.push(this.entry(kv));
      const last = res.kvs.at(-1);
      if (!res.more || !last) return { entries, revision };
      from = Buffer.concat([last.key, Buffer.from([0])]);
    }
  }

  async put(key: string, value: Uint8Array, options?: PutOptions): Promise<Revision> {
    validateKey(key);
    checkValueSize(key, value, MAX_VALUE_BYTES);
    const lease = this.leaseId(options?.lease);
    this.assertOpen();
    const res = await this.rpc.call(
      `put ${JSON.stringify(key)}`,
      'write',
      (o) =>
        this.client.kv
          .put({ key: this.layout.key(key), value: bytes(value), ...(lease !== undefined ? { lease } : {}) }, o)
          .catch(leaseLost(lease)),
      options?.signal,
    );
    return res.header.revision;
  }

  async putIf(key: string, value: Uint8Array, condition: PutCondition, options?: PutOptions): Promise<CasResult> {
    validateKey(key);
    checkValueSize(key, value, MAX_VALUE_BYTES);
    const lease = this.leaseId(options?.lease);
    this.assertOpen();
    const k = this.layout.key(key);
    const res = await this.rpc.call(
      `conditional put ${JSON.stringify(key)}`,
      'write',
      (o) =>
        this.client.kv
          .txn(
            {
              compare: [compareFor(k, condition)],
              success: [{ request_put: { key: k, value: bytes(value), ...(lease !== undefined ? { lease } : {}) } }],
              failure: [{ request_range: { key: k } }],
            },
            o,
          )
          .catch(leaseLost(lease)),
      options?.signal,
    );
    if (res.succeeded) return { ok: true, revision: res.header.revision };
    const current = this.readBack(res, 0);
    if (condition.absent) return { ok: false, reason: 'exists', ...(current ? { current } : {}) };
    return current ? { ok: false, reason: 'modified', current } : { ok: false, reason: 'missing' };
  }

  async delete(key: string, options?: { signal?: AbortSignal }): Promise<boolean> {
    validateKey(key);
    this.assertOpen();
    const res = await this.rpc.call(
      `delete ${JSON.stringify(key)}`,
      'write',
      (o) => this.client.kv.deleteRange({ key: this.layout.key(key) }, o),
      options?.signal,
    );
    return res.deleted !== '0';
  }

  async deleteIf(key: string, revision: Revision, options?: { signal?: AbortSignal }): Promise<CasResult> {
    validateKey(key);
    this.assertOpen();
    const k = this.layout.key(key);
    const res = await this.rpc.call(
      `conditional delete ${JSON.stringify(key)}`,
      'write',
      (o) =>
        this.client.kv.txn(
          {
            compare: [compareFor(k, { revision })],
            success: [{ request_delete_range: { key: k } }],
            failure: [{ request_range: { key: k } }],
          },
          o,
        ),
      options?.signal,
    );
    if (res.succeeded) return { ok: true, revision: res.header.revision };
    const current = this.readBack(res, 0);
    return current ? { ok: false, reason: 'modified', current } : { ok: false, reason: 'missing' };
  }

  async txn(ops: readonly TxnOp[], options?: { signal?: AbortSignal }): Promise<TxnResult> {
    const written = new Set<string>();
    let bytesEstimate = 0;
    const leases: Array<string | undefined> = [];
    for (const op of ops) {
      validateKey(op.key);
      if (op.op === 'put') checkValueSize(op.key, op.value, MAX_VALUE_BYTES);
      leases.push(op.op === 'put' ? this.leaseId(op.lease) : undefined);
      if (op.op !== 'check') {
        if (written.has(op.key)) {
          throw new InvalidKeyError(op.key, 'the transaction writes it more than once (etcd allows one write per key in a transaction)');
        }
        written.add(op.key);
      }
      const keyBytes = this.layout.key(op.key).length + TXN_OVERHEAD_BYTES_PER_OP;
      bytesEstimate += (op.op === 'put' ? keyBytes + op.value.byteLength : keyBytes) + (op.if ? 2 * keyBytes : 0);
    }
    if (ops.length > MAX_TXN_OPS) throw new TxnTooLargeError(ops.length, `etcd accepts at most ${MAX_TXN_OPS} (--max-txn-ops)`);
    if (bytesEstimate > ETCD_MAX_REQUEST_BYTES - REQUEST_MARGIN_BYTES) {
      throw new TxnTooLargeError(
        ops.length,
        `about ${bytesEstimate} bytes, more than etcd's request limit of ${ETCD_MAX_REQUEST_BYTES} bytes (--max-request-bytes) less ${REQUEST_MARGIN_BYTES} bytes of headroom`,
      );
    }
    this.assertOpen();
    if (ops.length === 0) return { ok: true, revisions: [] };

    const compare: ICompare[] = [];
    const success: IRequestOp[] = [];
    const failure: IRequestOp[] = [];
    const conditioned: Array<{ key: string; condition: PutCondition }> = [];
    ops.forEach((op, i) => {
      const k = this.layout.key(op.key);
      if (op.if) {
        compare.push(compareFor(k, op.if));
        failure.push({ request_range: { key: k, keys_only: true } });
        conditioned.push({ key: op.key, condition: op.if });
      }
      const lease = leases[i];
      if (op.op === 'put') success.push({ request_put: { key: k, value: bytes(op.value), ...(lease !== undefined ? { lease } : {}) } });
      else if (op.op === 'delete') success.push({ request_delete_range: { key: k } });
    });
    const anyLease = leases.find((l) => l !== undefined);
    const res = await this.rpc.call(
      `transaction of ${ops.length} operations on ${JSON.stringify(ops[0]!.key)}…`,
      'write',
      (o) => this.client.kv.txn({ compare, success, failure }, o).catch(leaseLost(anyLease)),
      options?.signal,
    );
    if (res.succeeded) {
      return { ok: true, revisions: ops.map((op) => (op.op === 'put' ? res.header.revision : undefined)) };
    }
    const failed = conditioned.find(({ condition }, i) => {
      const kv = res.responses[i]?.response_range?.kvs[0];
      return condition.absent ? kv !== undefined : kv?.mod_revision !== condition.revision;
    });
    return failed ? { ok: false, failedKey: failed.key } : { ok: false };
  }

  watch(prefix: string, fromRevision: Revision, options?: WatchOptions): AsyncIterable<WatchBatch> {
    validatePrefix(prefix);
    validateStartsWith(options?.startsWith);
    this.assertOpen();
    if (!/^[0-9]+$/.test(fromRevision)) {
      const channel = new WatchChannel(() => undefined, options?.signal);
      channel.fail(new WatchResetError(prefix, `${JSON.stringify(fromRevision)} is not an etcd revision`));
      return channel;
    }
    const watch = new EtcdWatch(this.rpc, this.layout, prefix, options?.startsWith, BigInt(fromRevision), options?.signal, (w) =>
      this.watches.delete(w),
    );
    if (!watch.channel.isClosed) this.watches.add(watch);
    return watch.channel;
  }

  async grantLease(ttlSeconds: number, options?: { signal?: AbortSignal }): Promise<Lease> {
    checkLeaseTtl(ttlSeconds);
    this.assertOpen();
    const ttl = Math.min(Math.max(1, Math.ceil(ttlSeconds)), LEASE_MAX_TTL_S);
    const sentAt = performance.now();
    const res = await this.rpc.call(
      `grant a lease of ${ttl} s`,
      'write',
      (o) => this.client.leaseClient.leaseGrant({ TTL: ttl }, o),
      options?.signal,
    );
    if (res.error) throw new StoreProtocolError(this.url, `granting a lease of ${ttl} s failed: ${res.error}`);
    this.assertOpen();
    // etcd raises a TTL below its minimum (1.5 × election timeout, 2 s by default) and says so here
    const lease = new EtcdLease(this.rpc, res.ID, Number(res.TTL), sentAt, (l) => this.leases.delete(l));
    this.leases.add(lease);
    return lease;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const watch of [...this.watches]) watch.fail(new StoreClosedError(this.url));
      for (const lease of [...this.leases]) lease.close();
      this.client.close();
    })();
    return this.closing;
  }

  private assertOpen(): void {
    if (this.closing) throw new StoreClosedError(this.url);
  }

  /** The etcd lease ID to bind a key to; refuses a lease this store knows is gone. */
  private leaseId(lease: Lease | undefined): string | undefined {
    if (!lease) return undefined;
    if (lease instanceof EtcdLease && lease.unusable) {
      throw new LeaseLostError(lease.id, lease.unusable === 'closed' ? 'its store was closed' : `it was ${lease.unusable}`);
    }
    if (!REVISION.test(lease.id)) throw new LeaseLostError(lease.id, 'it is not an etcd lease');
    return lease.id;
  }

  private entry(kv: IKeyValue): KVEntry {
    return {
      key: this.layout.strip(kv.key),
      value: new Uint8Array(kv.value),
      revision: kv.mod_revision,
      ...(kv.lease !== '0' && kv.lease !== '' ? { leaseId: kv.lease } : {}),
    };
  }

  /** The key read by the failure branch's `i`-th range. */
  private readBack(res: ITxnResponse, i: number): KVEntry | undefined {
    const kv = res.responses[i]?.response_range?.kvs[0];
    return kv ? this.entry(kv) : undefined;
  }
}

function compareFor(key: Buffer, condition: PutCondition): ICompare {
  if (condition.absent) return { key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: '0' };
  const revision = REVISION.test(condition.revision) ? condition.revision : NEVER_REVISION;
  return { key, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: revision };
}

function bytes(value: Uint8Array): Buffer {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

/** etcd answers a put with an unknown lease with "requested lease not found". */
function leaseLost(lease: string | undefined): (err: unknown) => never {
  return (err) => {
    if (err instanceof EtcdLeaseInvalidError) throw new LeaseLostError(lease ?? '?', 'etcd no longer knows it (expired or revoked)');
    throw err;
  };
}
