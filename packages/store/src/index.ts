/**
 * @packageDocumentation
 * kvnet's store layer: one {@link KVStore} contract, four backends chosen by URL.
 *
 * ```ts
 * const store = await openStore('etcd://127.0.0.1:2379/kvnet');
 * const r = await store.putIf('networks/n1', encodeJson({ name: 'multi' }), { absent: true });
 * if (!r.ok) console.log('someone else created it first');
 * await store.close();
 * ```
 */

export type {
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
  StoreAuthOptions,
  StoreBackendName,
  StoreCapabilities,
  StoreOptions,
  StoreTlsOptions,
  TxnOp,
  TxnResult,
  WatchBatch,
  WatchEvent,
  WatchOptions,
} from './store.ts';
export { DEFAULT_TIMEOUT_MS, DEFAULT_CONSUL_MAX_WATCHES } from './store.ts';
export {
  InvalidKeyError,
  KvnetError,
  errorCode,
  errorKind,
  InvalidStoreUrlError,
  LeaseLostError,
  StoreClosedError,
  StoreError,
  StoreProtocolError,
  StoreUnavailableError,
  storeErrorDetail,
  TxnTooLargeError,
  ValueTooLargeError,
  WatchResetError,
  hasCode,
  isStoreError,
  type ErrorKind,
} from './errors.ts';
export { validateKey, validatePrefix, validateStartsWith, isUnder, joinKey, encodeSegment, decodeSegment } from './keys.ts';
export { parseStoreUrl, DEFAULT_PREFIX, DEFAULT_LOCAL_PATH, type StoreAddress, type StoreHost } from './store-url.ts';
export { openStore, parseStoreOpts } from './open-store.ts';
export { encodeJson, decodeJson, encodeText, decodeText } from './codec.ts';
export { backoffDelay, sleep, withDeadline } from './deadline.ts';
export { PrefixMirror, type MirrorChange, type PrefixMirrorOptions } from './prefix-mirror.ts';
