/**
 * Errors raised by the store layer. Every error has a stable `code` and a `kind`; callers branch on
 * those, never on the message or on `instanceof` across packages. Messages name the thing and the
 * value so they can be shown to a person as they are.
 */

/** Broad classes of failure, shared by every kvnet package so edges (CLI, plugin API) can map them. */
export type ErrorKind =
  | 'invalid' // the caller's input is wrong; retrying the same call cannot help
  | 'not-found'
  | 'conflict' // the thing exists / is taken / was changed by someone else
  | 'exhausted' // a pool or range has nothing left
  | 'unavailable' // a dependency (store, kernel, docker) cannot be reached now; retry later
  | 'internal';

/**
 * The base of every kvnet error, in every package: a stable `code` (`KVNET_…`), a {@link ErrorKind}
 * that edges map to HTTP statuses, plugin answers and exit codes, and a message for people.
 */
export abstract class KvnetError extends Error {
  abstract readonly code: string;
  abstract readonly kind: ErrorKind;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The kind of any error that carries a stable `code` and `kind` (any kvnet package's); undefined otherwise. */
export function errorKind(err: unknown): ErrorKind | undefined {
  if (err instanceof Error && typeof (err as { kind?: unknown }).kind === 'string' && typeof (err as { code?: unknown }).code === 'string') {
    return (err as unknown as { kind: ErrorKind }).kind;
  }
  return undefined;
}

/** The stable code of an error, `KVNET_INTERNAL` for one without. */
export function errorCode(err: unknown): string {
  return err instanceof Error && typeof (err as { code?: unknown }).code === 'string' ? (err as unknown as { code: string }).code : 'KVNET_INTERNAL';
}

/** Errors of the store layer. */
export abstract class StoreError extends KvnetError {}

/** A key or prefix that cannot be stored: empty segment, `.`/`..`, NUL, characters outside the safe set. */
export class InvalidKeyError extends StoreError {
  readonly code = 'KVNET_STORE_INVALID_KEY';
  readonly kind = 'invalid';
  constructor(
    readonly key: string,
    reason: string,
  ) {
    super(`invalid store key ${JSON.stringify(key)}: ${reason}`);
  }
}

/** A `--cluster-store` URL or store option that cannot be used. */
export class InvalidStoreUrlError extends StoreError {
  readonly code = 'KVNET_STORE_INVALID_URL';
  readonly kind = 'invalid';
  constructor(
    readonly url: string,
    reason: string,
  ) {
    super(`invalid cluster store ${JSON.stringify(url)}: ${reason}`);
  }
}

/** A value larger than the backend accepts; raised before the value is sent. */
export class ValueTooLargeError extends StoreError {
  readonly code = 'KVNET_STORE_VALUE_TOO_LARGE';
  readonly kind = 'invalid';
  constructor(
    readonly key: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(`value for store key ${JSON.stringify(key)} is ${size} bytes, more than the backend's limit of ${limit}`);
  }
}

/**
 * A transaction larger than the backend accepts, raised before anything is sent. Only the etcd
 * backend raises it so far (`--max-txn-ops`, `--max-request-bytes`); see the README's error table.
 */
export class TxnTooLargeError extends StoreError {
  readonly code = 'KVNET_STORE_TXN_TOO_LARGE';
  readonly kind = 'invalid';
  constructor(
    readonly ops: number,
    detail: string,
  ) {
    super(`a store transaction of ${ops} operations is too large: ${detail}`);
  }
}

/**
 * The store could not be reached or did not answer within the configured timeout. The operation may
 * or may not have been applied (a write whose answer was lost); writes are designed to be idempotent
 * so the caller can retry.
 */
export class StoreUnavailableError extends StoreError {
  readonly code = 'KVNET_STORE_UNAVAILABLE';
  readonly kind = 'unavailable';
  constructor(
    readonly url: string,
    /** What went wrong (the message without "cluster store URL is unavailable: "). */
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`cluster store ${url} is unavailable: ${detail}`, options);
  }
}

/**
 * What went wrong with a store call, without the "cluster store URL is unavailable: " every
 * {@link StoreUnavailableError} starts with (for a message that names the store already, or keeps
 * only the last error); any other error's message as it is.
 */
export function storeErrorDetail(err: unknown): string {
  if (err instanceof StoreUnavailableError) return err.detail;
  return (err instanceof Error ? err.message : String(err)).replace(/^cluster store \S+ is unavailable: /, '');
}

/**
 * A watch cannot continue without a gap: the backend forgot the requested history (etcd compaction,
 * local log trimmed), lost its session (ZooKeeper expiry), reset its index (Consul) or the connection
 * broke. The caller must list again and watch from the new revision.
 */
export class WatchResetError extends StoreError {
  readonly code = 'KVNET_STORE_WATCH_RESET';
  readonly kind = 'unavailable';
  constructor(
    readonly prefix: string,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`watch on ${JSON.stringify(prefix)} must be restarted from a fresh listing: ${reason}`, options);
  }
}

/** A lease can no longer be kept alive: it expired or was revoked; keys bound to it are gone or going. */
export class LeaseLostError extends StoreError {
  readonly code = 'KVNET_STORE_LEASE_LOST';
  readonly kind = 'unavailable';
  constructor(
    readonly leaseId: string,
    reason: string,
  ) {
    super(`lease ${leaseId} was lost: ${reason}`);
  }
}

/** Raised when a closed store is used. */
export class StoreClosedError extends StoreError {
  readonly code = 'KVNET_STORE_CLOSED';
  readonly kind = 'internal';
  constructor(readonly url: string) {
    super(`cluster store ${url} is closed`);
  }
}

/** The backend answered with something the contract does not allow; a bug here or in the server. */
export class StoreProtocolError extends StoreError {
  readonly code = 'KVNET_STORE_PROTOCOL';
  readonly kind = 'internal';
  constructor(
    readonly url: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`cluster store ${url} answered unexpectedly: ${detail}`, options);
  }
}

/** Duck-typed check that works across package copies. */
export function isStoreError(err: unknown): err is StoreError {
  return err instanceof Error && typeof (err as { code?: unknown }).code === 'string' && 'kind' in err;
}

export function hasCode(err: unknown, code: string): boolean {
  return err instanceof Error && (err as { code?: unknown }).code === code;
}
