/**
 * The agent's store, counted: every call this agent makes (reads, writes, leases) and every watch
 * event it receives, as `kvnet_store_requests_total{op,kind}` and `kvnet_store_watch_events_total{prefix}`.
 * What a connect costs the store, and how many events each change fans out to, is then read off the
 * agents' `/metrics` on any backend (Consul's own counters cover 10-second intervals only). Lease
 * keep-alives happen inside the backend and are not counted here.
 */

import type { KVStore, Revision, TxnOp, WatchBatch, WatchOptions } from '@kvnet/store';
import type { AgentMetrics } from './metrics.ts';

/** A call that changes nothing: a transaction of checks only. */
function txnKind(ops: readonly TxnOp[]): 'read' | 'write' {
  return ops.every((o) => o.op === 'check') ? 'read' : 'write';
}

/** The first key segment (`endpoints`, `nodes`, …): a small, fixed set of label values. */
function topSegment(prefix: string): string {
  const i = prefix.indexOf('/');
  return i < 0 ? prefix : prefix.slice(0, i);
}

/** `store` with every call and watch event counted in `metrics`; behaves exactly like `store`. */
export function countingStore(store: KVStore, metrics: AgentMetrics): KVStore {
  const count = (op: string, kind: 'read' | 'write' | 'lease'): void => metrics.storeRequests.inc({ op, kind });
  return {
    get url() {
      return store.url;
    },
    get backend() {
      return store.backend;
    },
    get capabilities() {
      return store.capabilities;
    },
    get(key, options) {
      count('get', 'read');
      return store.get(key, options);
    },
    list(prefix, options) {
      count('list', 'read');
      return store.list(prefix, options);
    },
    put(key, value, options) {
      count('put', 'write');
      return store.put(key, value, options);
    },
    putIf(key, value, condition, options) {
      count('putIf', 'write');
      return store.putIf(key, value, condition, options);
    },
    delete(key, options) {
      count('delete', 'write');
      return store.delete(key, options);
    },
    deleteIf(key, revision, options) {
      count('deleteIf', 'write');
      return store.deleteIf(key, revision, options);
    },
    txn(ops, options) {
      count('txn', txnKind(ops));
      return store.txn(ops, options);
    },
    watch(prefix: string, fromRevision: Revision, options?: WatchOptions): AsyncIterable<WatchBatch> {
      const events = metrics.storeWatchEvents.labels({ prefix: topSegment(prefix) });
      const inner = store.watch(prefix, fromRevision, options);
      return {
        // forwarding the iterator (not an async generator, which adds a promise round per batch on the
        // path of every watch event)
        [Symbol.asyncIterator]() {
          const it = inner[Symbol.asyncIterator]();
          return {
            async next() {
              const r = await it.next();
              if (!r.done) events.inc(r.value.events.length);
              return r;
            },
            return: async (value?: unknown) => (it.return ? it.return(value) : { done: true as const, value: undefined }),
            throw: async (err?: unknown) => (it.throw ? it.throw(err) : Promise.reject(err)),
          };
        },
      };
    },
    grantLease(ttlSeconds, options) {
      count('grantLease', 'lease');
      return store.grantLease(ttlSeconds, options);
    },
    close() {
      return store.close();
    },
  };
}
