/**
 * The HTTP side of the Consul store: one `consul` client per server named in the URL, each with its
 * own keep-alive agent, and one entry point ({@link ConsulTransport.call}) that every request goes
 * through. It adds what the client lacks for the store contract:
 *
 * - a deadline per call (`withDeadline`) and per-request cancellation through the client's `ctx`
 *   emitter, so a call on a dead or frozen server fails with `StoreUnavailableError` naming the URL;
 * - failover: a request that could not even connect (refused, unreachable, connect timeout) goes to
 *   the next server in the URL, which then stays the preferred one;
 * - TLS and the ACL token (`X-Consul-Token`) from the store options;
 * - `X-Consul-Index` on every answer (the client returns the raw response with `ctx.includeResponse`);
 * - a GET that bypasses the client ({@link ConsulTransport.getJson}) for the reads of a key range: the
 *   client base64-decodes every value of an answer into a Buffer of its own, and a watch's answer
 *   carries the whole range for one change (125 records at 2 000 endpoints), of which it needs one;
 *   the same agent, token, deadline and failover apply;
 * - liveness for blocking reads. A watch's read waits minutes on the server for a change, so its own
 *   deadline cannot tell a quiet prefix from a server that stopped answering (frozen, or behind a
 *   partition that drops packets: the socket stays open). Every blocking read in flight is
 *   interrupted (rejected with {@link BlockingReadInterrupted}, which the watch answers by sending the
 *   same blocking read again, on another connection) when another call finds the server unreachable,
 *   or fails over to another server; and while a blocking read is open and nothing has answered for
 *   {@link LIVENESS_INTERVAL_MS}, the transport asks the server itself (`/v1/status/leader`), so a
 *   watch alone on a store learns of an outage as fast as a client that also writes. (The agent's
 *   store probe and lease renewals keep answers coming, so there the check is rarely sent.) On a
 *   server that is only slow the reads sent again cost it an index check each and send nothing back;
 *   on one that is gone they fail, and the watch goes on as after any failed read. Interruptions
 *   after failed calls come at most once per {@link LIVENESS_INTERVAL_MS} (on an overloaded machine
 *   calls time out in bursts, and each must not cost every watch a new request); after a failover,
 *   always.
 */

import Consul from 'consul';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import http, { type ClientRequestArgs, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { withDeadline } from './deadline.ts';
import { InvalidStoreUrlError, StoreClosedError, StoreProtocolError, StoreUnavailableError } from './errors.ts';
import { formatHost, type StoreAddress } from './store-url.ts';
import type { StoreOptions } from './store.ts';

/** How long one server may take to accept a TCP connection before the next one is tried. */
export const CONNECT_TIMEOUT_MS = 2_000;

/**
 * While a blocking read is open: if no call has had an answer for this long, check that the server
 * still answers (and interrupt the blocking reads if it does not).
 */
export const LIVENESS_INTERVAL_MS = 5_000;

/**
 * A blocking read cut short by the transport's liveness rules (see the module's doc), not by a failure
 * of its own: send it again. Its code is `KVNET_STORE_UNAVAILABLE` like any unanswered call.
 */
export class BlockingReadInterrupted extends StoreUnavailableError {}

/** The request never reached the server: safe to send to the next one, even for a write. */
const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'KVNET_CONNECT_TIMEOUT']);
/** The connection broke before an answer (often a keep-alive socket the server had just closed). */
const BROKEN_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ETIMEDOUT']);

/** The `ctx` the consul client accepts: emitting `cancel` aborts the request. */
export type RequestContext = EventEmitter & { includeResponse: true };

/** A 2xx answer: the decoded body (undefined for 404 on a KV read) and the headers. */
export interface ConsulReply<T> {
  readonly status: number;
  readonly body: T | undefined;
  readonly headers: IncomingHttpHeaders;
  /** `X-Consul-Index`, when the endpoint sends it. */
  readonly index: bigint | undefined;
}

/** A non-2xx answer from Consul; callers handle the statuses they expect and map the rest. */
export class ConsulHttpError extends Error {
  constructor(
    readonly status: number,
    /** Consul's error text (plain-text body), or the JSON body as text. */
    readonly text: string,
    /** The decoded body (transaction failures come as JSON). */
    readonly body: unknown,
  ) {
    super(`HTTP ${status}: ${text}`);
    this.name = 'ConsulHttpError';
  }
}

export interface CallOptions {
  readonly signal?: AbortSignal | undefined;
  /** Overrides the store's `timeoutMs` (blocking queries wait longer by design). */
  readonly timeoutMs?: number;
  /** The request may be sent again after a connection broke mid-request (reads only). */
  readonly idempotent?: boolean;
  /**
   * A blocking query (a watch's read): it may be interrupted by the transport's liveness rules (see
   * the module's doc), rejecting with `StoreUnavailableError`.
   */
  readonly blocking?: boolean;
}

/** Consul's HTTP API for one store: several servers, one preferred at a time. */
export class ConsulTransport {
  private readonly clients: Array<{ host: string; consul: Consul; agent: http.Agent }>;
  /** The address, agent and scheme behind each client, for {@link getJson}. */
  private readonly direct = new Map<Consul, { host: string; port: number; agent: http.Agent; tls: boolean }>();
  private readonly token: string | undefined;
  private readonly inflight = new Set<RequestContext>();
  /** Blocking reads in flight: aborting one interrupts it. */
  private readonly blocking = new Set<AbortController>();
  /** When (performance.now()) a server last answered any call, with success or an HTTP error. */
  private lastAnswerAt = performance.now();
  private liveness: NodeJS.Timeout | undefined;
  private checkingLiveness = false;
  /** When (performance.now()) blocking reads were last interrupted. */
  private interruptedAt = Number.NEGATIVE_INFINITY;
  private preferred = 0;
  private closed = false;

  constructor(
    private readonly address: StoreAddress,
    private readonly timeoutMs: number,
    options: StoreOptions,
    private readonly log: Logger | undefined,
  ) {
    const tls = loadTls(address.redacted, options);
    const token = options.auth?.token;
    this.clients = address.hosts.map((h) => {
      const host = formatHost(h);
      const agent = tls
        ? new GuardedHttpsAgent({ keepAlive: true, ...tls })
        : new GuardedHttpAgent({ keepAlive: true });
      // `baseUrl` is not in the client's option types; it keeps IPv6 hosts bracketed.
      const consul = new Consul({
        baseUrl: `${tls ? 'https' : 'http'}://${host}/v1`,
        agent,
        ...(token ? { defaults: { token } } : {}),
      } as ConstructorParameters<typeof Consul>[0]);
      this.direct.set(consul, { host: h.host, port: h.port, agent, tls: !!tls });
      return { host, consul, agent };
    });
    this.token = token;
    if (this.clients.length === 0) throw new InvalidStoreUrlError(address.redacted, 'no Consul server given');
  }

  get url(): string {
    return this.address.redacted;
  }

  /**
   * Runs one request against the preferred server, failing over to the next ones on connection
   * errors, within the deadline. `send` calls the consul client with the given `ctx`.
   */
  async call<T>(what: string, send: (consul: Consul, ctx: RequestContext) => Promise<unknown>, options: CallOptions = {}): Promise<ConsulReply<T>> {
    if (this.closed) throw new StoreClosedError(this.url);
    const run = (outer: AbortSignal | undefined): Promise<ConsulReply<T>> =>
      withDeadline(this.url, what, options.timeoutMs ?? this.timeoutMs, (signal) => this.attempt<T>(what, send, signal, options.idempotent ?? false), outer);
    if (options.blocking) {
      const interrupt = new AbortController();
      this.blocking.add(interrupt);
      this.watchLiveness();
      try {
        return await run(options.signal ? AbortSignal.any([options.signal, interrupt.signal]) : interrupt.signal);
      } finally {
        this.blocking.delete(interrupt);
      }
    }
    try {
      return await run(options.signal);
    } catch (err) {
      if (err instanceof StoreUnavailableError && !options.signal?.aborted) this.interruptBlocking(`${what} could not reach the server`);
      throw err;
    }
  }

  /**
   * Rejects every blocking read in flight with {@link BlockingReadInterrupted}: its caller sends it
   * again. After failed calls at most once per {@link LIVENESS_INTERVAL_MS}; after a failover always
   * (rare, and a read left on the server given up would hear nothing for minutes).
   */
  private interruptBlocking(why: string, always = false): void {
    if (this.blocking.size === 0) return;
    const now = performance.now();
    if (!always && now - this.interruptedAt < LIVENESS_INTERVAL_MS) return;
    this.interruptedAt = now;
    this.log?.debug({ reads: this.blocking.size, why }, 'interrupting blocking reads');
    for (const interrupt of this.blocking) interrupt.abort(new BlockingReadInterrupted(this.url, `blocking read interrupted: ${why}`));
    this.blocking.clear();
  }

  /** Runs the liveness check every {@link LIVENESS_INTERVAL_MS} while blocking reads are open. */
  private watchLiveness(): void {
    if (this.liveness || this.closed) return;
    this.liveness = setInterval(() => {
      if (this.blocking.size === 0 || this.closed) {
        clearInterval(this.liveness);
        this.liveness = undefined;
        return;
      }
      if (this.checkingLiveness || performance.now() - this.lastAnswerAt < LIVENESS_INTERVAL_MS) return;
      this.checkingLiveness = true;
      // a failure interrupts the blocking reads (in call); nothing else to do with it here
      this.call('liveness check', (consul, ctx) => consul.status.leader({ ctx } as Parameters<Consul['status']['leader']>[0]), { idempotent: true })
        .catch(() => undefined)
        .finally(() => (this.checkingLiveness = false));
    }, LIVENESS_INTERVAL_MS);
    this.liveness.unref();
  }

  private async attempt<T>(
    what: string,
    send: (consul: Consul, ctx: RequestContext) => Promise<unknown>,
    signal: AbortSignal,
    idempotent: boolean,
  ): Promise<ConsulReply<T>> {
    const refused: string[] = [];
    const first = this.preferred;
    let resent = false;
    for (let i = 0; i < this.clients.length; ) {
      signal.throwIfAborted();
      if (this.closed) throw new StoreClosedError(this.url);
      const index = (first + i) % this.clients.length;
      const client = this.clients[index]!;
      const ctx = Object.assign(new EventEmitter(), { includeResponse: true as const });
      const cancel = (): void => void ctx.emit('cancel');
      signal.addEventListener('abort', cancel, { once: true });
      this.inflight.add(ctx);
      try {
        const reply = toReply<T>(await send(client.consul, ctx));
        this.lastAnswerAt = performance.now();
        if (index !== this.preferred) {
          this.log?.warn({ server: client.host, unreachable: refused }, 'Consul server unreachable, failed over');
          this.preferred = index;
          // blocking reads still open on the server left behind would hear nothing until they time out
          this.interruptBlocking(`failed over to ${client.host}`, true);
        }
        return reply;
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        if (this.closed) throw new StoreClosedError(this.url);
        const response = responseOf(err);
        if (response) {
          this.lastAnswerAt = performance.now();
          throw toHttpError(response);
        }
        const code = errorCode(err);
        if (CONNECT_ERRORS.has(code)) {
          refused.push(`${client.host}: ${code}`);
          i++;
          continue;
        }
        if (idempotent && !resent && BROKEN_ERRORS.has(code)) {
          resent = true;
          continue;
        }
        throw new StoreUnavailableError(this.url, `${what} failed on ${client.host}: ${describe(err)}`, { cause: err });
      } finally {
        signal.removeEventListener('abort', cancel);
        this.inflight.delete(ctx);
      }
    }
    throw new StoreUnavailableError(this.url, `${what}: no server answered (${refused.join('; ')})`);
  }

  /**
   * A GET of `path` (below `/v1`, query included) sent without the consul client, for `send`: the JSON
   * body as Consul wrote it, with no per-item decoding (a KV listing's values stay base64 text). The
   * answer and its failures have the shapes the client's have, so {@link call} treats them alike.
   */
  getJson(consul: Consul, path: string, ctx: RequestContext): Promise<[IncomingMessage, unknown]> {
    const d = this.direct.get(consul);
    if (!d) return Promise.reject(new Error('getJson: not one of this transport\'s clients'));
    const send = d.tls ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const req = send(
        { host: d.host, port: d.port, path: `/v1${path}`, method: 'GET', agent: d.agent, headers: this.token ? { 'X-Consul-Token': this.token } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            const json = (res.headers['content-type'] ?? '').includes('json');
            let body: unknown = text;
            if (json && text.length > 0) {
              try {
                body = JSON.parse(text);
              } catch (err) {
                return reject(Object.assign(new Error(`the answer to GET ${path} is not JSON: ${(err as Error).message}`), { code: 'KVNET_BAD_JSON' }));
              }
            }
            if (status === 404) return resolve([res, undefined]);
            if (status < 200 || status >= 300) return reject({ isResponse: true, response: Object.assign(res, { body }) });
            resolve([res, body]);
          });
        },
      );
      req.on('error', reject);
      ctx.once('cancel', () => req.destroy(Object.assign(new Error('request cancelled'), { code: 'KVNET_CANCELLED' })));
      req.end();
    });
  }

  /** Maps an error from {@link call} that the caller did not handle itself to a store error. */
  fail(what: string, err: unknown): Error {
    if (!(err instanceof ConsulHttpError)) return err instanceof Error ? err : new Error(String(err));
    if (err.status === 401 || err.status === 403) return this.denied(what, err.text, err);
    if (err.status === 429 || err.status >= 500) {
      return new StoreUnavailableError(this.url, `${what}: server error ${err.status}: ${err.text}`, { cause: err });
    }
    return new StoreProtocolError(this.url, `${what}: HTTP ${err.status}: ${err.text}`, { cause: err });
  }

  /** The error for a request Consul's ACLs refused (kvnet has no error kind of its own for it). */
  denied(what: string, text: string, cause?: unknown): StoreUnavailableError {
    return new StoreUnavailableError(this.url, `${what} was refused by the server's ACLs (${text}); check the token`, { cause });
  }

  /** Aborts every request in flight and closes every socket. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.liveness);
    this.liveness = undefined;
    for (const ctx of this.inflight) ctx.emit('cancel');
    this.inflight.clear();
    for (const c of this.clients) c.agent.destroy();
  }
}

/** Consul's words for an ACL refusal, also inside a rolled-back transaction's errors. */
export function isAclDenial(text: string): boolean {
  return /permission denied|acl not found/i.test(text);
}

function loadTls(url: string, options: StoreOptions): https.AgentOptions | undefined {
  const tls = options.tls;
  if (!tls || (!tls.caFile && !tls.certFile && !tls.keyFile && tls.insecureSkipVerify === undefined)) return undefined;
  if (!!tls.certFile !== !!tls.keyFile) {
    throw new InvalidStoreUrlError(url, 'kv.certfile and kv.keyfile must be given together');
  }
  const read = (what: string, path: string | undefined): Buffer | undefined => {
    if (!path) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new InvalidStoreUrlError(url, `cannot read ${what} ${path}: ${(err as Error).message}`);
    }
  };
  const ca = read('kv.cacertfile', tls.caFile);
  const cert = read('kv.certfile', tls.certFile);
  const key = read('kv.keyfile', tls.keyFile);
  return {
    ...(ca ? { ca } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
    rejectUnauthorized: tls.insecureSkipVerify !== true,
  };
}

/**
 * Gives a new socket {@link CONNECT_TIMEOUT_MS} to connect, so an unanswering server (dropped SYNs)
 * fails over like a refusing one instead of eating the whole deadline; unbrackets IPv6 hosts, which
 * the client passes on as `[::1]` from its base URL.
 */
function guarded(options: ClientRequestArgs, create: (o: ClientRequestArgs) => Duplex | null | undefined): Duplex | null | undefined {
  const host = options.host;
  if (host?.startsWith('[') && host.endsWith(']')) options = { ...options, host: host.slice(1, -1) };
  const socket = create(options) as Socket | null | undefined;
  if (socket?.connecting) {
    // the check waits for setImmediate: after a stalled event loop, timers run before the I/O that
    // would have reported the connection as made
    const timer = setTimeout(
      () =>
        setImmediate(() => {
          if (!socket.connecting || socket.destroyed) return;
          socket.destroy(Object.assign(new Error(`no connection within ${CONNECT_TIMEOUT_MS} ms`), { code: 'KVNET_CONNECT_TIMEOUT' }));
        }),
      CONNECT_TIMEOUT_MS,
    );
    const clear = (): void => clearTimeout(timer);
    socket.once('connect', clear);
    socket.once('close', clear);
  }
  return socket;
}

class GuardedHttpAgent extends http.Agent {
  override createConnection(options: ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    return guarded(options, (o) => super.createConnection(o, callback));
  }
}

class GuardedHttpsAgent extends https.Agent {
  override createConnection(options: https.RequestOptions, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    return guarded(options, (o) => super.createConnection(o as https.RequestOptions, callback));
  }
}

/** With `ctx.includeResponse` the client resolves to `[response, body?]`. */
function toReply<T>(result: unknown): ConsulReply<T> {
  const [res, body] = Array.isArray(result) ? (result as [IncomingMessage, T | undefined]) : [undefined, undefined];
  if (!res) throw new Error('the consul client returned no response (ctx.includeResponse ignored)');
  const raw = res.headers['x-consul-index'];
  const index = typeof raw === 'string' && /^\d+$/.test(raw) ? BigInt(raw) : undefined;
  return { status: res.statusCode ?? 0, body, headers: res.headers, index };
}

/** The client (papi) marks HTTP failures with `isResponse` and keeps the response with its decoded body. */
function responseOf(err: unknown): (IncomingMessage & { body?: unknown }) | undefined {
  const e = err as { isResponse?: boolean; response?: IncomingMessage & { body?: unknown } };
  return e?.isResponse && e.response ? e.response : undefined;
}

function toHttpError(res: IncomingMessage & { body?: unknown }): ConsulHttpError {
  const body = res.body;
  const text = typeof body === 'string' ? body.trim() : Buffer.isBuffer(body) ? body.toString('utf8').trim() : body === undefined ? '' : JSON.stringify(body);
  return new ConsulHttpError(res.statusCode ?? 0, text || (http.STATUS_CODES[res.statusCode ?? 0] ?? 'no body'), body);
}

function errorCode(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' ? code : '';
}

function describe(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  // the client prefixes its own name and the call ("consul: kv.get: …")
  return message.replace(/^consul: [\w.]+: /, '');
}
