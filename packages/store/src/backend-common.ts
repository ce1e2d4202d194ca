/**
 * What every backend does the same way: the settings it derives from its address and options, and
 * the checks it makes on a caller's input before anything is sent. One place, so the four backends
 * cannot drift apart on the default timeout, the log fields or the wording of a refusal.
 */

import type { Logger } from 'pino';
import { ValueTooLargeError } from './errors.ts';
import type { StoreAddress } from './store-url.ts';
import { DEFAULT_TIMEOUT_MS, type StoreOptions } from './store.ts';

/** The settings every backend takes from its address and {@link StoreOptions}. */
export interface BackendSettings {
  /** The URL without credentials ({@link StoreAddress.redacted}), for `KVStore.url` and messages. */
  readonly url: string;
  /** Per-call deadline in milliseconds: the option, else {@link DEFAULT_TIMEOUT_MS}. */
  readonly timeoutMs: number;
  /** The caller's logger with `component: 'store'` and the backend's name; undefined without one. */
  readonly log: Logger | undefined;
}

/** The settings for a backend opened on `address`. */
export function backendSettings(address: StoreAddress, options: StoreOptions): BackendSettings {
  return {
    url: address.redacted,
    timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    log: options.logger?.child({ component: 'store', backend: address.backend }),
  };
}

/** Throws {@link ValueTooLargeError} when `value` is larger than the backend's `limit` in bytes. */
export function checkValueSize(key: string, value: Uint8Array, limit: number): void {
  if (value.byteLength > limit) throw new ValueTooLargeError(key, value.byteLength, limit);
}

/** Throws a RangeError unless `ttlSeconds` is a positive, finite number (a caller's bug, not a store error). */
export function checkLeaseTtl(ttlSeconds: number): void {
  if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) throw new RangeError(`lease TTL must be a positive number of seconds, got ${ttlSeconds}`);
}
