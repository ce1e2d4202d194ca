/**
 * HTTP/1.1 over unix sockets, written once for every kvnet socket: the agent's local API, the Docker
 * plugin, the Engine API client, the `kvnet` CLI and the tests.
 *
 * Server side ({@link listenUnix}): the socket is created with its final mode (the umask is narrowed
 * while `listen` creates the file, then the mode is set exactly); its directory is created with
 * `dirMode` when missing. **The stale-socket rule**, one for all: an existing path is replaced only
 * when it is a socket and connecting to it fails with ECONNREFUSED or ENOENT — nobody is listening.
 * Any other outcome (it accepts, it refuses with another error, it neither accepts nor fails within
 * {@link STALE_PROBE_TIMEOUT_MS}) means a live process holds it and start-up fails naming the path. On
 * close the socket file is removed only if it is still the one this server created (same inode):
 * another agent may have replaced it meanwhile.
 *
 * Bodies are read with a bound ({@link readBody}); a larger body is refused without reading it all.
 * Client side ({@link unixRequest}, {@link UnixJsonClient}): one request, JSON in and out, a timeout,
 * and an error whose `code` tells "nobody listens" from "no answer".
 */

import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createConnection } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { KvnetError, type ErrorKind } from '@kvnet/store/errors';

/** Largest request body any kvnet socket accepts. */
export const MAX_BODY_BYTES = 1024 * 1024;
/** How long a probe of an existing socket waits before treating it as held by a live process. */
export const STALE_PROBE_TIMEOUT_MS = 1_000;
/** Idle keep-alive connections are closed after this (clients are short-lived commands and dockerd). */
export const KEEP_ALIVE_TIMEOUT_MS = 1_000;

/** A unix-socket HTTP failure: a path that cannot be served, a body too large, a request without answer. */
export class UnixHttpError extends KvnetError {
  constructor(
    message: string,
    readonly code: string,
    readonly kind: ErrorKind,
    /** The errno code of the underlying failure (ENOENT, ECONNREFUSED, EACCES, …), when there was one. */
    readonly errno?: string,
  ) {
    super(message);
  }
}

/** True when a process holds the unix socket at `path` (see the stale-socket rule above). */
export function socketAnswers(path: string, timeoutMs = STALE_PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection(path);
    const done = (alive: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(alive);
    };
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', (err: NodeJS.ErrnoException) => done(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'));
  });
}

export interface UnixListenOptions {
  /** Mode of the socket file, e.g. 0o600 (root only) or 0o660 (root and the socket's group). */
  readonly mode: number;
  /** Mode of the directory when it has to be created (default 0o755). */
  readonly dirMode?: number;
  /** What the socket is for, in messages: "the local API (--socket)". */
  readonly what: string;
  readonly logger: Logger;
}

/** A listening unix-socket HTTP server; {@link close} ends connections and removes its own socket file. */
export interface UnixServer {
  readonly path: string;
  readonly server: Server;
  close(): Promise<void>;
}

/** Listens on `path` after applying the stale-socket rule; `handler` gets every request. */
export async function listenUnix(path: string, handler: (req: IncomingMessage, res: ServerResponse) => void, opts: UnixListenOptions): Promise<UnixServer> {
  const dir = dirname(path);
  try {
    statSync(dir);
  } catch {
    mkdirSync(dir, { recursive: true, mode: opts.dirMode ?? 0o755 });
  }
  let existing;
  try {
    existing = lstatSync(path);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isSocket()) throw new UnixHttpError(`cannot serve ${opts.what} on ${path}: the path exists and is not a socket; refusing to replace it`, 'KVNET_SOCKET_IN_USE', 'invalid');
    if (await socketAnswers(path)) throw new UnixHttpError(`cannot serve ${opts.what}: another process is answering on socket ${path} (is an agent already running?)`, 'KVNET_SOCKET_IN_USE', 'conflict');
    opts.logger.info({ socket: path }, 'replacing a stale socket');
    unlinkSync(path);
  }
  const server = createServer(handler);
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  const oldMask = process.umask(0o777 & ~opts.mode);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(oldMask);
  }
  chmodSync(path, opts.mode);
  const inode = statSync(path).ino;
  let closed: Promise<void> | undefined;
  return {
    path,
    server,
    close: () =>
      (closed ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
        try {
          if (statSync(path).ino === inode) unlinkSync(path);
        } catch {
          // already gone
        }
      })()),
  };
}

/**
 * The request body as text. Refuses (UnixHttpError KVNET_BODY_TOO_LARGE, reading stopped) a body
 * that declares or reaches more than `maxBytes`; the caller answers 413 and closes the connection.
 */
export function readBody(req: IncomingMessage, maxBytes = MAX_BODY_BYTES): Promise<string> {
  const tooLarge = (n: string): UnixHttpError => new UnixHttpError(`request body ${n} exceeds ${maxBytes} bytes`, 'KVNET_BODY_TOO_LARGE', 'invalid');
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > maxBytes) {
    req.resume();
    return Promise.reject(tooLarge(`of ${declared} bytes`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > maxBytes) {
        req.off('data', onData);
        req.pause();
        reject(tooLarge('sent'));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
    req.once('close', () => {
      if (!req.complete) reject(new UnixHttpError('the client closed the connection before sending the whole body', 'KVNET_BODY_INCOMPLETE', 'invalid'));
    });
  });
}

/**
 * Why a body is not JSON, without echoing it: V8's message quotes the input (control characters and
 * all), which must not reach a terminal or a log as it came.
 */
export function describeJsonError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message
    .replace(/, ".*" is not valid JSON$/s, '')
    .replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    .slice(0, 200);
}

/** Answers with a JSON body (or none); `close` asks the client to drop the connection afterwards. */
export function sendJson(res: ServerResponse, status: number, body?: unknown, opts: { contentType?: string; close?: boolean } = {}): void {
  if (body === undefined) {
    res.writeHead(status, opts.close ? { connection: 'close' } : {}).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': opts.contentType ?? 'application/json',
    'content-length': Buffer.byteLength(text),
    ...(opts.close ? { connection: 'close' } : {}),
  });
  res.end(text);
}

export interface UnixRequest {
  readonly socketPath: string;
  readonly method: string;
  readonly path: string;
  /** Sent as JSON when defined. */
  readonly body?: unknown;
  /** Sent as it is instead of `body` (tests of malformed input). */
  readonly rawBody?: string | Buffer;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  readonly headers?: Record<string, string>;
}

export interface UnixResponse {
  readonly status: number;
  /** Parsed JSON; the raw text when it is not JSON; undefined when empty. */
  readonly body: unknown;
  readonly text: string;
}

/**
 * One HTTP request over a unix socket. Rejects with UnixHttpError: `KVNET_UNREACHABLE` (with the
 * errno: nobody listens, no such socket, permission denied) or `KVNET_TIMEOUT` (no answer in time);
 * its message is the bare reason, for the caller to put in its own context. An answer of any status
 * resolves.
 */
export function unixRequest(r: UnixRequest): Promise<UnixResponse> {
  const payload = r.rawBody ?? (r.body === undefined ? undefined : JSON.stringify(r.body));
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath: r.socketPath,
        method: r.method,
        path: r.path,
        timeout: r.timeoutMs,
        ...(r.signal ? { signal: r.signal } : {}),
        headers: {
          host: 'localhost',
          accept: 'application/json',
          ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) } : {}),
          ...r.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = text ? JSON.parse(text) : undefined;
          } catch {
            body = text;
          }
          resolve({ status: res.statusCode ?? 0, body, text });
        });
      },
    );
    req.on('timeout', () => req.destroy(new UnixHttpError(`no answer within ${r.timeoutMs} ms`, 'KVNET_TIMEOUT', 'unavailable')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err instanceof UnixHttpError) return reject(err);
      reject(new UnixHttpError(err.message, 'KVNET_UNREACHABLE', 'unavailable', err.code));
    });
    req.end(payload);
  });
}
