/**
 * The one place where the agent's faces fail fast while the store is known to be down. The faces,
 * the network service, IPAM and the record rules all use the store returned by {@link guardStore}:
 * while {@link StoreHealth} says `unavailable`, every call is refused at once with the same
 * `StoreUnavailableError` (`cluster store etcd://… is unavailable: unreachable since … (12 s); last
 * error: …`) instead of each one waiting for the store's full timeout. Every call's outcome is
 * reported back: a call that found no store makes it suspect and the mirror's probe checks at once
 * (one timed-out call on a loaded store is not an outage; the probe failing too is), and a call that
 * answers ends a suspicion or an outage. Membership and the mirrors use the raw store: they are how
 * the agent notices the store is back.
 */

import { hasCode, type KVStore } from '@kvnet/store';
import type { StoreHealth } from './cluster-mirror.ts';

/** `store` with every call admitted by `health` and its outcome reported to it. Watches pass through. */
export function guardStore(store: KVStore, health: StoreHealth): KVStore {
  const call = async <T>(fn: () => Promise<T>): Promise<T> => {
    if (!health.admits()) throw health.unavailableError();
    try {
      const result = await fn();
      health.callOk();
      return result;
    } catch (err) {
      if (hasCode(err, 'KVNET_STORE_UNAVAILABLE')) health.failure('call', err);
      else health.callOk();
      throw err;
    }
  };
  return {
    url: store.url,
    backend: store.backend,
    capabilities: store.capabilities,
    get: (key, options) => call(() => store.get(key, options)),
    list: (prefix, options) => call(() => store.list(prefix, options)),
    put: (key, value, options) => call(() => store.put(key, value, options)),
    putIf: (key, value, condition, options) => call(() => store.putIf(key, value, condition, options)),
    delete: (key, options) => call(() => store.delete(key, options)),
    deleteIf: (key, revision, options) => call(() => store.deleteIf(key, revision, options)),
    txn: (ops, options) => call(() => store.txn(ops, options)),
    watch: (prefix, fromRevision, options) => store.watch(prefix, fromRevision, options),
    grantLease: (ttlSeconds, options) => call(() => store.grantLease(ttlSeconds, options)),
    // the agent closes the raw store itself
    close: async () => undefined,
  };
}
