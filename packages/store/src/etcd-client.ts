/**
 * The etcd connection shared by the etcd backend's modules: the `etcd3` client built from a store
 * address (hosts, TLS, user/password), the server-side key layout, error mapping, and
 * {@link EtcdRpc.call}, through which every unary request goes.
 *
 * Only the generated RPC layer of `etcd3` is used (`client.kv`, `client.watchClient`,
 * `client.leaseClient`); its watch manager and lease helper are not (see `etcd-watch.ts` and
 * `etcd-lease.ts` for why). Retries are ours, not the library's: its default global policy re-sends
 * a request whose answer was lost, which turns a committed compare-and-swap into a reported
 * conflict (see ../README.md, "Client libraries"). Here a request is re-sent only when it provably never left
 * (grpc-js "No connection established", a skipped host) or when it is a read.
 */

import { readFileSync } from 'node:fs';
import {
  ClientClosedError,
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdInvalidAuthTokenError,
  EtcdPermissionDeniedError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
  type IOptions,
} from 'etcd3';
import type { Logger } from 'pino';
import { backoffDelay, sleep, withDeadline } from './deadline.ts';
import { InvalidStoreUrlError, StoreClosedError, StoreProtocolError, StoreUnavailableError, isStoreError } from './errors.ts';
import { prefixEnd, rangeStart } from './keys.ts';
import { formatHost, type StoreAddress } from './store-url.ts';
import type { StoreOptions } from './store.ts';

/** HTTP/2 keepalive ping interval; etcd's `--grpc-keepalive-min-time` (5 s) refuses faster pings. */
export const GRPC_KEEPALIVE_TIME_MS = 10_000;
/** A connection whose keepalive ping is not answered in this time is closed and redialled. */
export const GRPC_KEEPALIVE_TIMEOUT_MS = 5_000;
/** grpc-js redials with exponential backoff; its 120 s default cap would outlast a server restart. */
export const GRPC_RECONNECT_BACKOFF_INITIAL_MS = 100;
export const GRPC_RECONNECT_BACKOFF_MAX_MS = 2_000;
/** Backoff between attempts of one call inside its deadline. */
export const CALL_RETRY_BASE_MS = 50;
export const CALL_RETRY_CAP_MS = 500;
/** An attempt is not started when less than this is left of the deadline; the last error is reported instead. */
export const CALL_RETRY_MIN_REMAINING_MS = 100;
/** With several hosts: after this many consecutive failures a host is skipped for {@link HOST_SKIP_MS}. */
export const HOST_FAILURES_BEFORE_SKIP = 3;
export const HOST_SKIP_MS = 3_000;

type FaultPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;
type CallOptions = { deadline?: Date | number };

/** Raised by the host policy instead of calling a host that failed repeatedly; nothing was sent. */
class HostSkippedError extends Error {
  constructor(host: string) {
    super(`etcd member ${host} failed ${HOST_FAILURES_BEFORE_SKIP} times in a row; skipping it for ${HOST_SKIP_MS} ms`);
    this.name = 'HostSkippedError';
  }
}

const NEVER_ABORTED = new AbortController().signal;

/** Runs the call once; the library's default retries are what must not happen. */
function passThroughPolicy(): FaultPolicy {
  return {
    execute: async <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T) => fn({ signal: NEVER_ABORTED }),
  } as unknown as FaultPolicy; // etcd3 only ever calls execute()
}

/** With several members, skips one that keeps failing so calls go to the others. */
function skipFailingHostPolicy(host: string): FaultPolicy {
  let failures = 0;
  let skipUntil = 0;
  return {
    execute: async <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T) => {
      if (performance.now() < skipUntil) throw new HostSkippedError(host);
      try {
        const result = await fn({ signal: NEVER_ABORTED });
        failures = 0;
        return result;
      } catch (err) {
        if (err instanceof Error && isRecoverableError(err) && ++failures >= HOST_FAILURES_BEFORE_SKIP) {
          failures = 0;
          skipUntil = performance.now() + HOST_SKIP_MS;
        }
        throw err;
      }
    },
  } as unknown as FaultPolicy;
}

function readPem(url: string, what: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new InvalidStoreUrlError(url, `cannot read the ${what} ${file}: ${(err as Error).message}`);
  }
}

/**
 * Builds the (not yet connected) client: gRPC channels dial lazily, so this never contacts the
 * server. TLS files are read here; any TLS option switches every host to https.
 */
export function createEtcdClient(address: StoreAddress, options: StoreOptions, timeoutMs: number): Etcd3 {
  const url = address.redacted;
  const tls = options.tls;
  const secure = tls?.caFile !== undefined || tls?.certFile !== undefined || tls?.keyFile !== undefined;
  if (tls?.insecureSkipVerify) {
    // etcd3 hands only (ca, key, cert) to grpc.credentials.createSsl, so verification cannot be turned off.
    throw new InvalidStoreUrlError(url, 'kv.insecure is not supported by the etcd backend; give the server CA with kv.cacertfile');
  }
  if ((tls?.certFile === undefined) !== (tls?.keyFile === undefined)) {
    throw new InvalidStoreUrlError(url, 'a client certificate needs both kv.certfile and kv.keyfile');
  }
  const username = options.auth?.username ?? address.username;
  const password = options.auth?.username !== undefined ? options.auth.password : address.password;
  if (username !== undefined && password === undefined) {
    throw new InvalidStoreUrlError(url, `the etcd user ${JSON.stringify(username)} needs a password`);
  }
  const hosts = address.hosts.map((h) => `${secure ? 'https' : 'http'}://${formatHost(h)}`);
  const clientOptions: IOptions = {
    hosts,
    grpcOptions: {
      'grpc.keepalive_time_ms': GRPC_KEEPALIVE_TIME_MS,
      'grpc.keepalive_timeout_ms': GRPC_KEEPALIVE_TIMEOUT_MS,
      'grpc.initial_reconnect_backoff_ms': GRPC_RECONNECT_BACKOFF_INITIAL_MS,
      'grpc.max_reconnect_backoff_ms': GRPC_RECONNECT_BACKOFF_MAX_MS,
      // a listing can be far larger than grpc-js's 4 MiB default; etcd itself sends up to 2 GiB
      'grpc.max_receive_message_length': -1,
    },
    // also bounds the user/password exchange, which etcd3 runs outside our calls
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    faultHandling: {
      global: passThroughPolicy(),
      host: hosts.length > 1 ? skipFailingHostPolicy : () => passThroughPolicy(),
    },
  };
  if (secure && tls) {
    clientOptions.credentials = {
      // undefined means the system roots; the option's type insists on a Buffer
      rootCertificate: (tls.caFile !== undefined ? readPem(url, 'CA file', tls.caFile) : undefined) as Buffer,
      ...(tls.keyFile !== undefined ? { privateKey: readPem(url, 'client key file', tls.keyFile) } : {}),
      ...(tls.certFile !== undefined ? { certChain: readPem(url, 'client certificate file', tls.certFile) } : {}),
    };
  }
  if (username !== undefined) clientOptions.auth = { username, password: password ?? '' };
  return new Etcd3(clientOptions);
}

/**
 * Where kvnet keys live on the server: `<prefix>/<key>`, e.g. `kvnet/networks/n1`. Listing and
 * watching `p` cover `[<prefix>/p/, <prefix>/p0)`: `0` follows `/` in byte order, so the range holds
 * exactly the keys strictly below `p`.
 */
export class KeyLayout {
  private readonly root: string;

  constructor(
    prefix: string,
    private readonly url: string,
  ) {
    this.root = `${prefix}/`;
  }

  key(key: string): Buffer {
    return Buffer.from(this.root + key);
  }

  /**
   * The server range below `prefix` (`''` = the whole store), with `startsWith` only the keys whose
   * path below `prefix/` starts with it: from `<root><prefix>/<startsWith>` to its prefix end (the
   * last byte plus one; keys and `startsWith` are ASCII below 0x7f, so it never carries).
   */
  range(prefix: string, startsWith?: string): { key: Buffer; range_end: Buffer } {
    const start = this.root + rangeStart(prefix, startsWith);
    return { key: Buffer.from(start), range_end: Buffer.from(prefixEnd(start)) };
  }

  /** The relative key of a server key; the server only returns keys from our ranges. */
  strip(serverKey: Buffer): string {
    const key = serverKey.toString('utf8');
    if (!key.startsWith(this.root)) {
      throw new StoreProtocolError(this.url, `etcd returned the key ${JSON.stringify(key)}, outside the prefix ${this.root}`);
    }
    return key.slice(this.root.length);
  }
}

/** Grpc-js fails a call with this before sending anything when it has no connection to the server. */
function neverSent(err: unknown): boolean {
  return err instanceof HostSkippedError || (err instanceof Error && err.message.includes('No connection established'));
}

function retryableRead(err: unknown): boolean {
  return neverSent(err) || err instanceof GRPCUnavailableError;
}

/** The gRPC message for people: no class prefix or grpc-js trailer, with a hint for TLS failures. */
export function describeGrpcError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const message = err.message
    .replace(/^\w+Error: /, '')
    .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, '')
    .replace(/\.?\s*Resolution note:\s*$/, '')
    .trim();
  return `${message}${tlsHint(message)}`;
}

function tlsHint(message: string): string {
  if (/alert (bad certificate|certificate required|unknown ca|handshake failure)|SSL alert number (40|42|48|116)/i.test(message)) {
    return ' (TLS: the server refused the client certificate: none was given, or the server does not trust its CA; see kv.certfile, kv.keyfile)';
  }
  if (/unable to verify|self[- ]signed certificate|certificate has expired|Hostname\/IP does not match|unable to get (local )?issuer/i.test(message)) {
    return " (TLS: the server's certificate is not trusted by kv.cacertfile, or does not name this host)";
  }
  return '';
}

/**
 * Runs requests against one etcd client: each through {@link withDeadline}, re-sent inside the
 * deadline only when that cannot apply a write twice, with failures mapped to the store's errors.
 */
export class EtcdRpc {
  constructor(
    readonly url: string,
    readonly timeoutMs: number,
    readonly client: Etcd3,
    readonly log: Logger | undefined,
  ) {}

  /**
   * One call. `fn` gets gRPC call options carrying the deadline and runs the request; a `read` is
   * retried on any unavailability, a `write` only when it was never sent.
   */
  async call<T>(what: string, kind: 'read' | 'write', fn: (options: CallOptions) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const deadline = Date.now() + this.timeoutMs;
    try {
      return await withDeadline(
        this.url,
        what,
        this.timeoutMs,
        async (deadlineSignal) => {
          let last: unknown;
          for (let attempt = 0; ; attempt++) {
            // a late wake-up must not start an attempt that can only time out and hide the real cause
            if (attempt > 0 && Date.now() + CALL_RETRY_MIN_REMAINING_MS > deadline) throw last;
            try {
              return await abortable(fn({ deadline }), deadlineSignal, signal);
            } catch (err) {
              last = err;
              const again = kind === 'read' ? retryableRead(err) : neverSent(err);
              const delay = backoffDelay(attempt, CALL_RETRY_BASE_MS, CALL_RETRY_CAP_MS);
              if (!again || deadlineSignal.aborted || Date.now() + delay + CALL_RETRY_MIN_REMAINING_MS > deadline) throw err;
              this.log?.debug({ what, attempt, err: describeGrpcError(err) }, 'etcd call failed before reaching the server, retrying');
              await sleep(delay, deadlineSignal);
            }
          }
        },
        signal,
      );
    } catch (err) {
      if (signal?.aborted && err === signal.reason) throw err;
      throw this.toStoreError(err, what);
    }
  }

  /** Maps a library or gRPC failure to the store's error classes. */
  toStoreError(err: unknown, what: string): Error {
    if (isStoreError(err)) return err;
    if (err instanceof ClientClosedError) return new StoreClosedError(this.url);
    if (err instanceof EtcdAuthenticationFailedError || err instanceof EtcdInvalidAuthTokenError) {
      return new StoreUnavailableError(this.url, `${what}: etcd refused the credentials (${describeGrpcError(err)})`, { cause: err });
    }
    if (err instanceof Error && /user name is empty/.test(err.message)) {
      return new StoreUnavailableError(this.url, `${what}: etcd requires a user and password (user:password@ in the URL, or kv.username and kv.password)`, {
        cause: err,
      });
    }
    if (err instanceof EtcdPermissionDeniedError) {
      return new StoreUnavailableError(this.url, `${what}: the etcd user may not access this prefix (${describeGrpcError(err)})`, {
        cause: err,
      });
    }
    if (err instanceof GRPCDeadlineExceededError) {
      return new StoreUnavailableError(this.url, `${what} got no answer within ${this.timeoutMs} ms`, { cause: err });
    }
    if (err instanceof Error && (isRecoverableError(err) || neverSent(err))) {
      return new StoreUnavailableError(this.url, `${what} failed: ${describeGrpcError(err)}`, { cause: err });
    }
    return new StoreProtocolError(this.url, `${what} failed: ${describeGrpcError(err)}`, { cause: err });
  }
}

/**
 * Settles with `promise`, or rejects with the caller's abort reason as soon as `outer` aborts. The
 * deadline's own abort is left to {@link withDeadline}, which rejects with StoreUnavailableError.
 */
export function abortable<T>(promise: Promise<T>, deadlineSignal: AbortSignal, outer: AbortSignal | undefined): Promise<T> {
  if (!outer) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      if (outer.aborted) reject(outer.reason);
    };
    deadlineSignal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        deadlineSignal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        deadlineSignal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** Ends a gRPC stream without etcd3 treating it as a host failure (it resets the host's clients on an error from a still-writable stream). */
export function closeStream(stream: { end(): unknown; cancel(): void; writable?: boolean } | undefined): void {
  if (!stream) return;
  try {
    stream.end();
  } catch {
    // already destroyed
  }
  stream.cancel();
}
