/**
 * One ZooKeeper session for the ZooKeeper backend: a node-zookeeper-client connection (which
 * reconnects within the session by itself) plus what that client lacks (../README.md, "Client libraries"):
 *
 * - requests that hand back the reply header's zxid (the server's position when it answered), sent
 *   straight through the client's connection manager so replies and watch notifications reach us
 *   synchronously and in wire order;
 * - a liveness probe and the rule "no answer for a whole session timeout = expired": the client only
 *   learns about expiry after it reconnects, so a frozen or unreachable server would otherwise leave
 *   watches and leases hanging forever;
 * - a close that never leaves a socket or timer behind, with or without ending the session on the
 *   server (`graceful` deletes its ephemeral znodes now, `drop` leaves them to the session timeout).
 *
 * State machine: connecting → connected ⇄ disconnected (the client reconnects with the same session,
 * re-sending its watches with the last zxid seen, so nothing is missed) → ended. A session ends when
 * the server says it expired, when nothing was heard for a whole session timeout after it had once
 * connected, or when it is closed; an ended session is never reused (a new client is made instead).
 *
 * This module reaches into node-zookeeper-client 1.1.x internals (`connectionManager`, `lib/jute`);
 * they are typed locally below.
 */

import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import * as zk from 'node-zookeeper-client';
import type { Logger } from 'pino';
import type { StoreHost } from './store-url.ts';

/** Pause between two rounds over the server list while reconnecting. */
export const RECONNECT_SPIN_MS = 500;
/** Send a probe when nothing was heard for this fraction of the session timeout (keepalive ≤ TTL/3). */
export const SESSION_RENEW_FRACTION = 1 / 3;
/** Drop the connection and reconnect (maybe to another server) after this much silence. */
export const SESSION_RECONNECT_FRACTION = 2 / 3;
/** How often the liveness rule is evaluated, as a fraction of the session timeout, and its bounds. */
export const LIVENESS_CHECK_FRACTION = 1 / 6;
export const LIVENESS_CHECK_MIN_MS = 50;
export const LIVENESS_CHECK_MAX_MS = 1_000;
/**
 * A connection the server accepted but whose handshake it has not answered after this fraction of the
 * session timeout is dropped and tried again (the client's own connect timeout stops at the TCP
 * connect: a server that accepts and then says nothing — stopping, starting, frozen — held it forever).
 */
export const HANDSHAKE_FRACTION = 1 / 2;
/** How long a graceful close waits for the server to confirm before the socket is destroyed. */
export const CLOSE_CONFIRM_MS = 1_000;
const CLOSE_POLL_MS = 25;

/** ZooKeeper error codes used by the backend (node-zookeeper-client `Exception`). */
export const ZK = {
  OK: zk.Exception.OK,
  CONNECTION_LOSS: zk.Exception.CONNECTION_LOSS,
  OPERATION_TIMEOUT: zk.Exception.OPERATION_TIMEOUT,
  SESSION_EXPIRED: zk.Exception.SESSION_EXPIRED,
  NO_NODE: zk.Exception.NO_NODE,
  NO_AUTH: zk.Exception.NO_AUTH,
  INVALID_ACL: zk.Exception.INVALID_ACL,
  AUTH_FAILED: zk.Exception.AUTH_FAILED,
  BAD_VERSION: zk.Exception.BAD_VERSION,
  NO_CHILDREN_FOR_EPHEMERALS: zk.Exception.NO_CHILDREN_FOR_EPHEMERALS,
  NODE_EXISTS: zk.Exception.NODE_EXISTS,
  NOT_EMPTY: zk.Exception.NOT_EMPTY,
  RUNTIME_INCONSISTENCY: zk.Exception.RUNTIME_INCONSISTENCY,
} as const;

// ---- node-zookeeper-client internals, typed locally ----

interface JuteStat {
  czxid: Buffer;
  mzxid: Buffer;
  version: number;
  ephemeralOwner: Buffer;
  dataLength: number;
  numChildren: number;
  pzxid: Buffer;
}

interface JuteReply {
  header: { zxid: Buffer; err: number };
  payload: unknown;
}

type JuteCallback = (error: { code: number; name?: string } | null, reply?: JuteReply) => void;

interface JuteMultiOp {
  type: number;
  path: string;
  data?: Buffer;
  acls?: zk.ACL[];
  mode?: number;
  version?: number;
}

interface Jute {
  OP_CODES: { CREATE: number; DELETE: number; EXISTS: number; GET_DATA: number; SET_DATA: number; GET_CHILDREN2: number; CHECK: number; MULTI: number; ERROR: number };
  protocol: {
    RequestHeader: new () => { type: number };
    GetDataRequest: new () => { path: string; watch: boolean };
    GetChildren2Request: new () => { path: string; watch: boolean };
    ExistsRequest: new () => { path: string; watch: boolean };
  };
  Request: new (header: unknown, payload: unknown) => unknown;
  TransactionRequest: new (ops: JuteMultiOp[]) => unknown;
}

/** ConnectionManager states (lib/ConnectionManager.js `STATES`). */
const CM_CLOSING = -1;
const CM_CLOSED = -2;

interface ConnectionManager {
  state: number;
  socket?: Socket;
  /** Bytes of a reply not yet complete; the client keeps them across connections (see the constructor). */
  pendingBuffer: Buffer | null;
  onSocketConnected(): void;
  onSocketClosed(hadError: boolean): void;
  connectTimeoutHandler: NodeJS.Timeout | null;
  servers: Array<{ host: string; port: number }>;
  queue(request: unknown, callback: JuteCallback): void;
  close(): void;
  setState(state: number): void;
  findNextServer(callback: (server: { host: string; port: number }) => void): void;
  registerDataWatcher(path: string, watcher: (event: zk.Event) => void): void;
  registerChildWatcher(path: string, watcher: (event: zk.Event) => void): void;
  registerExistenceWatcher(path: string, watcher: (event: zk.Event) => void): void;
}

const jute = createRequire(import.meta.url)('node-zookeeper-client/lib/jute') as Jute;
const OP = jute.OP_CODES;

// ---- public types ----

/** A znode's stat with the 64-bit fields as bigints. */
export interface ZkStat {
  readonly czxid: bigint;
  readonly mzxid: bigint;
  readonly pzxid: bigint;
  readonly version: number;
  /** 0n for persistent znodes, else the owning session's id. */
  readonly ephemeralOwner: bigint;
  readonly numChildren: number;
  readonly dataLength: number;
}

/** A ZooKeeper error code from a reply (or a connection-level failure). */
export class ZkError extends Error {
  constructor(
    readonly code: number,
    readonly path: string,
    /** The reply header's zxid when the server answered (absent for connection failures). */
    readonly zxid?: bigint,
  ) {
    super(`ZooKeeper ${codeName(code)} (${code}) on ${path}`);
    this.name = 'ZkError';
  }
}

/** Why a session ended. */
export type SessionEndReason = 'expired' | 'closed' | 'revoked' | 'released' | 'auth-failed';

/** Raised for requests on a session that has ended. */
export class SessionEndedError extends Error {
  constructor(readonly reason: SessionEndReason, detail: string) {
    super(`ZooKeeper session ended (${reason}): ${detail}`);
    this.name = 'SessionEndedError';
  }
}

/** Which one-shot watch fired: the data watch (getData/exists), the child watch, or an existence watch. */
export type WatchKind = 'data' | 'child' | 'exists';
export type WatchListener = (kind: WatchKind, path: string) => void;

export type ZkOp =
  | { readonly op: 'create'; readonly path: string; readonly data: Buffer; readonly ephemeral: boolean }
  | { readonly op: 'set'; readonly path: string; readonly data: Buffer; readonly version: number }
  | { readonly op: 'delete'; readonly path: string; readonly version: number }
  | { readonly op: 'check'; readonly path: string; readonly version: number };

export type MultiOutcome =
  /** `stats[i]` is set for `set` ops; every op of a multi shares the transaction's `zxid`. */
  | { readonly ok: true; readonly zxid: bigint; readonly stats: ReadonlyArray<ZkStat | undefined> }
  | { readonly ok: false; readonly code: number; readonly index: number };

export interface DataReply {
  readonly data: Buffer;
  readonly stat: ZkStat;
  readonly zxid: bigint;
}
export interface ChildrenReply {
  readonly children: string[];
  readonly stat: ZkStat;
  readonly zxid: bigint;
}

export interface ZkSessionOptions {
  readonly servers: readonly StoreHost[];
  /** Requested session timeout; the server clamps it to its min/max. */
  readonly sessionTimeoutMs: number;
  /** Digest credentials `user:password`, added to the session before it connects. */
  readonly digest?: string;
  readonly logger?: Logger;
  /** For log lines: `main` or `lease`. */
  readonly role: string;
}

const EMPTY = Buffer.alloc(0);

export function zxidOf(buf: Buffer): bigint {
  return buf.readBigUInt64BE(0);
}

function parseStat(s: JuteStat): ZkStat {
  return {
    czxid: zxidOf(s.czxid),
    mzxid: zxidOf(s.mzxid),
    pzxid: zxidOf(s.pzxid),
    version: s.version,
    ephemeralOwner: zxidOf(s.ephemeralOwner),
    numChildren: s.numChildren,
    dataLength: s.dataLength,
  };
}

export function codeName(code: number): string {
  for (const [name, value] of Object.entries(ZK)) if (value === code) return name;
  return 'ERROR';
}

/** True for failures that say nothing about the data: the request may or may not have been applied. */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof SessionEndedError) return true;
  return err instanceof ZkError && (err.code === ZK.CONNECTION_LOSS || err.code === ZK.OPERATION_TIMEOUT || err.code === ZK.SESSION_EXPIRED);
}

/**
 * One ZooKeeper session. Create, {@link start}, use, and {@link close}; {@link ended} resolves with
 * the reason once it is over, and an ended session refuses every request.
 */
export class ZkSession {
  private readonly client: zk.Client;
  private readonly cm: ConnectionManager;
  private readonly log: Logger | undefined;
  private readonly acls: zk.ACL[];
  private connected = false;
  private everConnected = false;
  private lastHeardAt = Date.now();
  /** When the current socket's TCP connect completed while the handshake is still unanswered. */
  private handshakeSince: number | undefined;
  private probing = false;
  private closing = false;
  private endReason: SessionEndReason | undefined;
  private resolveEnded!: (reason: SessionEndReason) => void;
  private readonly readyWaiters = new Set<{ resolve: () => void; reject: (err: unknown) => void }>();
  private readonly watchListeners = new Set<WatchListener>();
  private readonly connectListeners = new Set<() => void>();
  private readonly endListeners = new Set<(reason: SessionEndReason, detail: string) => void>();
  private timer: NodeJS.Timeout | undefined;
  private sessionIdHex = '';
  private negotiatedMs: number;

  /** Resolves once the session is over, with the reason. */
  readonly ended: Promise<SessionEndReason>;

  private readonly onDataWatch = (event: zk.Event): void => this.dispatch('data', event);
  private readonly onChildWatch = (event: zk.Event): void => this.dispatch('child', event);
  private readonly onExistsWatch = (event: zk.Event): void => this.dispatch('exists', event);

  constructor(private readonly options: ZkSessionOptions) {
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.log = options.logger;
    this.negotiatedMs = options.sessionTimeoutMs;
    const connectString = options.servers.map((h) => `${h.host.includes(':') ? '127.0.0.1' : h.host}:${h.port}`).join(',');
    this.client = zk.createClient(connectString, { sessionTimeout: options.sessionTimeoutMs, spinDelay: RECONNECT_SPIN_MS, retries: 0 });
    this.cm = (this.client as unknown as { connectionManager: ConnectionManager }).connectionManager;
    // The client's own parser splits "host:port" at the first colon, which breaks IPv6 literals.
    this.cm.servers = shuffle(options.servers.map((h) => ({ host: h.host, port: h.port })));
    // A reconnect already scheduled (spin delay) must not open a socket after close().
    const findNextServer = this.cm.findNextServer.bind(this.cm);
    this.cm.findNextServer = (callback) => findNextServer((server) => (this.closing ? undefined : callback(server)));
    // The client binds these per socket when it connects, so instance properties take effect.
    const onSocketConnected = this.cm.onSocketConnected.bind(this.cm);
    this.cm.onSocketConnected = () => {
      this.handshakeSince = Date.now();
      onSocketConnected();
    };
    const onSocketClosed = this.cm.onSocketClosed.bind(this.cm);
    this.cm.onSocketClosed = (hadError) => {
      // A reply cut off by the closed connection must not be glued to the next connection's first
      // bytes (the client would read the handshake answer as the rest of it and wait forever).
      this.cm.pendingBuffer = null;
      this.handshakeSince = undefined;
      onSocketClosed(hadError);
    };
    this.acls = options.digest
      ? [new zk.ACL(zk.Permission.ALL, new zk.Id('auth', ''))]
      : [new zk.ACL(zk.Permission.ALL, new zk.Id('world', 'anyone'))];
    if (options.digest) this.client.addAuthInfo('digest', Buffer.from(options.digest));
    this.client.on('state', (state: zk.State) => this.onState(state));
  }

  /** Starts connecting (in the background). */
  start(): void {
    this.client.connect();
    this.scheduleLiveness();
  }

  get isConnected(): boolean {
    return this.connected && this.endReason === undefined;
  }

  get isEnded(): boolean {
    return this.endReason !== undefined;
  }

  get endedReason(): SessionEndReason | undefined {
    return this.endReason;
  }

  /** The negotiated session timeout once connected (the requested one before). */
  get timeoutMs(): number {
    return this.negotiatedMs;
  }

  /** The session id as 16 hex digits, once connected. */
  get id(): string {
    return this.sessionIdHex;
  }

  /** The session id as ZooKeeper puts it into `ephemeralOwner`. */
  get idBigint(): bigint {
    return this.sessionIdHex === '' ? 0n : BigInt(`0x${this.sessionIdHex}`);
  }

  /** Called (synchronously, in wire order) for every watch notification of this session. */
  onWatch(listener: WatchListener): () => void {
    this.watchListeners.add(listener);
    return () => this.watchListeners.delete(listener);
  }

  /** Called after every (re)connection within the session. */
  onConnect(listener: () => void): () => void {
    this.connectListeners.add(listener);
    return () => this.connectListeners.delete(listener);
  }

  /** Called once when the session ends (also right away, asynchronously, if it already has). */
  onEnd(listener: (reason: SessionEndReason, detail: string) => void): () => void {
    if (this.endReason) {
      const reason = this.endReason;
      queueMicrotask(() => listener(reason, 'the session is over'));
      return () => undefined;
    }
    this.endListeners.add(listener);
    return () => this.endListeners.delete(listener);
  }

  /** Resolves when connected; rejects when the session ends or `signal` aborts. */
  ready(signal?: AbortSignal): Promise<void> {
    if (this.endReason) return Promise.reject(new SessionEndedError(this.endReason, 'the session is over'));
    if (this.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (err: unknown) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      const onAbort = (): void => {
        this.readyWaiters.delete(waiter);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.readyWaiters.add(waiter);
    });
  }

  // ---- raw requests: callbacks run synchronously as the reply is parsed, in wire order ----

  private send(type: number, payload: unknown, path: string, callback: (err: ZkError | SessionEndedError | undefined, reply?: JuteReply) => void): void {
    if (this.endReason) {
      const reason = this.endReason;
      queueMicrotask(() => callback(new SessionEndedError(reason, 'the session is over')));
      return;
    }
    const header = new jute.protocol.RequestHeader();
    header.type = type;
    this.cm.queue(new jute.Request(header, payload), (error, reply) => {
      if (reply?.header) this.lastHeardAt = Date.now();
      if (error) {
        if (error.code === ZK.SESSION_EXPIRED || error.code === ZK.AUTH_FAILED) {
          const reason = this.endReason ?? (error.code === ZK.AUTH_FAILED ? 'auth-failed' : 'expired');
          callback(new SessionEndedError(reason, `the server answered ${codeName(error.code)}`));
          return;
        }
        callback(new ZkError(error.code, path, reply?.header ? zxidOf(reply.header.zxid) : undefined));
        return;
      }
      callback(undefined, reply);
    });
  }

  /** getData; with `watch`, arms the data watch (fires on change or delete). */
  readData(path: string, watch: boolean, callback: (err: ZkError | SessionEndedError | undefined, reply?: DataReply) => void): void {
    const req = new jute.protocol.GetDataRequest();
    req.path = path;
    req.watch = watch;
    this.send(OP.GET_DATA, req, path, (err, reply) => {
      if (err || !reply) return callback(err);
      if (watch) this.cm.registerDataWatcher(path, this.onDataWatch);
      const p = reply.payload as { data?: Buffer; stat: JuteStat };
      callback(undefined, { data: p.data ?? EMPTY, stat: parseStat(p.stat), zxid: zxidOf(reply.header.zxid) });
    });
  }

  /** getChildren2; with `watch`, arms the child watch (fires on child create/delete or node delete). */
  readChildren(path: string, watch: boolean, callback: (err: ZkError | SessionEndedError | undefined, reply?: ChildrenReply) => void): void {
    const req = new jute.protocol.GetChildren2Request();
    req.path = path;
    req.watch = watch;
    this.send(OP.GET_CHILDREN2, req, path, (err, reply) => {
      if (err || !reply) return callback(err);
      if (watch) this.cm.registerChildWatcher(path, this.onChildWatch);
      const p = reply.payload as { children: string[]; stat: JuteStat };
      callback(undefined, { children: p.children ?? [], stat: parseStat(p.stat), zxid: zxidOf(reply.header.zxid) });
    });
  }

  /** exists; with `watch`, arms a data watch when it exists and an existence watch when it does not. */
  readExists(path: string, watch: boolean, callback: (err: ZkError | SessionEndedError | undefined, stat?: ZkStat, zxid?: bigint) => void): void {
    const req = new jute.protocol.ExistsRequest();
    req.path = path;
    req.watch = watch;
    this.send(OP.EXISTS, req, path, (err, reply) => {
      if (err instanceof ZkError && err.code === ZK.NO_NODE) {
        if (watch) this.cm.registerExistenceWatcher(path, this.onExistsWatch);
        return callback(undefined, undefined, err.zxid);
      }
      if (err || !reply) return callback(err);
      if (watch) this.cm.registerDataWatcher(path, this.onDataWatch);
      callback(undefined, parseStat((reply.payload as { stat: JuteStat }).stat), zxidOf(reply.header.zxid));
    });
  }

  // ---- promise forms for one-off calls ----

  /** getData without a watch; undefined when the znode does not exist. */
  getData(path: string): Promise<DataReply | undefined> {
    return new Promise((resolve, reject) =>
      this.readData(path, false, (err, reply) => {
        if (err instanceof ZkError && err.code === ZK.NO_NODE) resolve(undefined);
        else if (err) reject(err);
        else resolve(reply);
      }),
    );
  }

  /** exists without a watch; undefined when the znode does not exist. */
  exists(path: string): Promise<ZkStat | undefined> {
    return new Promise((resolve, reject) =>
      this.readExists(path, false, (err, stat) => {
        if (err) reject(err);
        else resolve(stat);
      }),
    );
  }

  /** Applies `ops` atomically. A failed condition is an outcome; connection problems reject. */
  multi(ops: readonly ZkOp[]): Promise<MultiOutcome> {
    const juteOps: JuteMultiOp[] = ops.map((o) => {
      switch (o.op) {
        case 'create':
          return { type: OP.CREATE, path: o.path, data: o.data, acls: this.acls, mode: o.ephemeral ? zk.CreateMode.EPHEMERAL : zk.CreateMode.PERSISTENT };
        case 'set':
          return { type: OP.SET_DATA, path: o.path, data: o.data, version: o.version };
        case 'delete':
          return { type: OP.DELETE, path: o.path, version: o.version };
        case 'check':
          return { type: OP.CHECK, path: o.path, version: o.version };
      }
    });
    return new Promise((resolve, reject) =>
      this.send(OP.MULTI, new jute.TransactionRequest(juteOps), ops[0]?.path ?? '/', (err, reply) => {
        if (err instanceof ZkError && err.zxid !== undefined) {
          // Older servers answer a failed multi with the error in the header only.
          resolve({ ok: false, code: err.code, index: -1 });
          return;
        }
        if (err || !reply) return reject(err);
        const results = (reply.payload as { results: Array<{ type: number; err?: number; stat?: JuteStat }> }).results;
        const failed = results.findIndex((r) => r.type === OP.ERROR && r.err !== ZK.OK && r.err !== ZK.RUNTIME_INCONSISTENCY);
        if (failed !== -1) {
          resolve({ ok: false, code: results[failed]!.err!, index: failed });
          return;
        }
        resolve({ ok: true, zxid: zxidOf(reply.header.zxid), stats: results.map((r) => (r.stat ? parseStat(r.stat) : undefined)) });
      }),
    );
  }

  // ---- lifecycle ----

  /**
   * Ends the session. `graceful` asks the server to close it (its ephemeral znodes go now) and waits
   * up to `confirmMs` for the answer; `drop` only closes the connection, so the server keeps the
   * session (and its ephemeral znodes) until its timeout runs out. Resolves true when the server
   * confirmed a graceful close. Idempotent; `reason` is what {@link ended} reports.
   */
  async close(mode: 'graceful' | 'drop', reason: SessionEndReason, confirmMs = CLOSE_CONFIRM_MS): Promise<boolean> {
    const wasConnected = this.connected;
    this.end(reason, `closed (${mode})`);
    return this.shutdownClient(mode === 'graceful' && wasConnected, confirmMs);
  }

  /** Stops the client for good; `graceful` sends closeSession first (only useful while connected). */
  private shutdownClient(graceful: boolean, confirmMs: number): Promise<boolean> {
    if (this.closing) return Promise.resolve(false);
    this.closing = true;
    if (this.timer) clearTimeout(this.timer);
    const cm = this.cm;
    if (cm.state === CM_CLOSED) return Promise.resolve(false);
    if (graceful && cm.socket) {
      cm.close();
    } else {
      cm.setState(CM_CLOSING);
      cm.socket?.destroy();
    }
    const started = Date.now();
    return new Promise((resolve) => {
      const poll = (): void => {
        if (cm.state === CM_CLOSED || Date.now() - started > confirmMs) {
          const confirmed = cm.state === CM_CLOSED && graceful;
          cm.setState(CM_CLOSING);
          cm.socket?.destroy();
          if (cm.connectTimeoutHandler) clearTimeout(cm.connectTimeoutHandler);
          resolve(confirmed);
          return;
        }
        setTimeout(poll, CLOSE_POLL_MS);
      };
      poll();
    });
  }

  /** Marks the session over (once), fails waiters and tells listeners; the client is shut down. */
  private end(reason: SessionEndReason, detail: string): void {
    if (this.endReason) return;
    const wasConnected = this.connected;
    this.endReason = reason;
    this.connected = false;
    if (reason === 'expired' || reason === 'auth-failed') {
      this.log?.warn({ session: this.sessionIdHex, role: this.options.role, detail }, 'ZooKeeper session lost');
    } else {
      this.log?.debug({ session: this.sessionIdHex, role: this.options.role, reason }, 'ZooKeeper session closed');
    }
    const err = new SessionEndedError(reason, detail);
    for (const w of this.readyWaiters) w.reject(err);
    this.readyWaiters.clear();
    this.resolveEnded(reason);
    for (const l of [...this.endListeners]) l(reason, detail);
    this.endListeners.clear();
    this.watchListeners.clear();
    this.connectListeners.clear();
    // Ask the server to end it too: if it still knows the session, its ephemeral znodes go at once.
    if (reason === 'expired' || reason === 'auth-failed') void this.shutdownClient(wasConnected, CLOSE_CONFIRM_MS);
  }

  private onState(state: zk.State): void {
    if (this.endReason) return;
    if (state === zk.State.SYNC_CONNECTED) {
      const id = this.client.getSessionId().toString('hex');
      if (this.sessionIdHex !== '' && id !== this.sessionIdHex) {
        // The client silently started a new session: whatever the old one held is gone.
        this.end('expired', `the server gave a new session ${id} instead of ${this.sessionIdHex}`);
        return;
      }
      this.sessionIdHex = id;
      this.negotiatedMs = this.client.getSessionTimeout();
      this.connected = true;
      this.everConnected = true;
      this.handshakeSince = undefined;
      this.lastHeardAt = Date.now();
      for (const w of this.readyWaiters) w.resolve();
      this.readyWaiters.clear();
      for (const l of [...this.connectListeners]) l();
      this.scheduleLiveness();
    } else if (state === zk.State.DISCONNECTED) {
      this.connected = false;
    } else if (state === zk.State.EXPIRED) {
      this.end('expired', 'the server reports the session expired');
    } else if (state === zk.State.AUTH_FAILED) {
      this.end('auth-failed', 'the server refused the credentials');
    }
  }

  private dispatch(kind: WatchKind, event: zk.Event): void {
    if (this.endReason) return;
    this.lastHeardAt = Date.now();
    const path = event.getPath();
    for (const l of [...this.watchListeners]) l(kind, path);
  }

  private scheduleLiveness(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.closing || this.endReason) return;
    const every = Math.min(LIVENESS_CHECK_MAX_MS, Math.max(LIVENESS_CHECK_MIN_MS, this.negotiatedMs * LIVENESS_CHECK_FRACTION));
    this.timer = setTimeout(() => {
      this.checkLiveness();
      this.scheduleLiveness();
    }, every);
  }

  private checkLiveness(afterIo = false): void {
    if (this.endReason) return;
    const silentMs = Date.now() - this.lastHeardAt;
    const timeout = this.negotiatedMs;
    const overdue = (this.everConnected && silentMs > timeout) || (this.connected && silentMs > timeout * SESSION_RECONNECT_FRACTION);
    if (overdue && !afterIo) {
      // After a stall of this process, timers run before the socket data that arrived meanwhile is
      // read: decide only once pending I/O has been processed.
      setImmediate(() => this.checkLiveness(true));
      return;
    }
    // A session that never connected has nothing to lose; it keeps trying until closed.
    if (this.everConnected && silentMs > timeout) {
      this.end('expired', `no answer from the server for ${silentMs} ms, longer than the session timeout of ${timeout} ms`);
      return;
    }
    if (!this.connected) {
      const waitedMs = this.handshakeSince === undefined ? 0 : Date.now() - this.handshakeSince;
      if (waitedMs > timeout * HANDSHAKE_FRACTION) {
        this.log?.info({ session: this.sessionIdHex, role: this.options.role, waitedMs }, 'ZooKeeper accepted the connection but did not answer the handshake; connecting again');
        this.handshakeSince = undefined;
        this.cm.socket?.destroy();
      }
      return;
    }
    if (silentMs > timeout * SESSION_RECONNECT_FRACTION) {
      this.log?.info({ session: this.sessionIdHex, silentMs }, 'no answer from ZooKeeper, reconnecting');
      this.cm.socket?.destroy();
      return;
    }
    if (silentMs > timeout * SESSION_RENEW_FRACTION && !this.probing) {
      this.probing = true;
      this.readExists('/', false, () => (this.probing = false));
    }
  }
}

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}
