/**
 * The Docker plugin server: Docker's remote NetworkDriver + IpamDriver protocol over HTTP on a unix
 * socket, by default `/run/docker/plugins/kvnet.sock` — dockerd finds a v1 plugin by that file name
 * (plugin name `kvnet`: `docker network create -d kvnet --ipam-driver kvnet …`).
 *
 * ```ts
 * const plugin = new DockerPluginServer({ socketPath, handlers: new DockerDriver({ backend, logger }), logger });
 * await plugin.start();   // refuses a socket another process answers on; replaces a stale one
 * await plugin.stop();    // closes connections, removes its socket
 * ```
 *
 * The socket is mode 0660 (dockerd runs as root). A call never crashes the server: bodies over
 * {@link MAX_BODY_BYTES}, malformed JSON and handler errors are answered in the field Docker reads.
 */

import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createConnection } from 'node:net';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { dispatchPluginCall, errorField, MAX_BODY_BYTES, PLUGIN_CONTENT_TYPE, type PluginHandlers } from './docker-protocol.ts';
import { InvalidConfigError } from './errors.ts';

export const DEFAULT_PLUGIN_SOCKET = '/run/docker/plugins/kvnet.sock';
export const PLUGIN_SOCKET_MODE = 0o660;
/** How long a probe of an existing socket waits for a connection before calling it stale. */
export const STALE_PROBE_TIMEOUT_MS = 1_000;

export interface DockerPluginServerOptions {
  readonly socketPath?: string;
  readonly handlers: PluginHandlers;
  readonly logger: Logger;
  /** Largest request body; default {@link MAX_BODY_BYTES}. */
  readonly maxBodyBytes?: number;
}

/** True when a process accepts connections on the unix socket at `path`. */
export function socketAnswers(path: string, timeoutMs = STALE_PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection(path);
    const done = (alive: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(alive);
    };
    // A listener that does not accept within the budget is treated as alive: never steal a busy socket.
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', (err: NodeJS.ErrnoException) => done(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT' ? true : false));
  });
}

export class DockerPluginServer {
  readonly socketPath: string;
  private server: Server | undefined;
  private inode: number | undefined;
  private readonly maxBodyBytes: number;

  constructor(private readonly opts: DockerPluginServerOptions) {
    this.socketPath = opts.socketPath ?? DEFAULT_PLUGIN_SOCKET;
    this.maxBodyBytes = opts.maxBodyBytes ?? MAX_BODY_BYTES;
  }

  async start(): Promise<void> {
    const path = this.socketPath;
    mkdirSync(dirname(path), { recursive: true });
    let existing;
    try {
      existing = lstatSync(path);
    } catch {
      existing = undefined;
    }
    if (existing) {
      if (!existing.isSocket()) throw new InvalidConfigError(`cannot serve the Docker plugin on ${path}: the path exists and is not a socket`);
      if (await socketAnswers(path)) throw new InvalidConfigError(`cannot serve the Docker plugin on ${path}: another process is serving it`);
      this.opts.logger.info({ socket: path }, 'replacing a stale Docker plugin socket');
      unlinkSync(path);
    }
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(path, PLUGIN_SOCKET_MODE);
    this.inode = statSync(path).ino;
    this.server = server;
    this.opts.logger.info({ socket: path }, 'Docker plugin listening');
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    try {
      // only our own socket: another agent may have replaced it meanwhile
      if (statSync(this.socketPath).ino === this.inode) unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
  }

  /** The body as text, or undefined once it exceeds the limit (reading stops there). */
  private readBody(req: IncomingMessage): Promise<string | undefined> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer): void => {
        size += chunk.length;
        if (size > this.maxBodyBytes) {
          req.off('data', onData);
          req.pause();
          resolve(undefined);
          return;
        }
        chunks.push(chunk);
      };
      req.on('data', onData);
      req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      req.once('error', reject);
      req.once('close', () => {
        if (!req.complete) reject(new Error('the client closed the connection before sending the whole body'));
      });
    });
  }

  /** Non-200 answers: Docker's generic plugin client reads `Err`; IPAM's 200 answers use `Error`, so IPAM gets both. */
  private fail(res: ServerResponse, method: string, status: number, message: string, close = false): void {
    this.send(res, status, errorField(method) === 'Error' ? { Err: message, Error: message } : { Err: message }, close);
  }

  private send(res: ServerResponse, status: number, body: Record<string, unknown>, close = false): void {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': PLUGIN_CONTENT_TYPE,
      'content-length': Buffer.byteLength(text),
      ...(close ? { connection: 'close' } : {}),
    });
    res.end(text);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const log = this.opts.logger;
    const method = (req.url ?? '/').replace(/^\/+/, '').split('?')[0]!;
    try {
      if (req.method !== 'POST') {
        req.resume();
        this.fail(res, method, 405, `kvnet plugin: ${req.method} not allowed; use POST /${method}`);
        return;
      }
      const declared = Number(req.headers['content-length'] ?? 0);
      if (declared > this.maxBodyBytes) {
        req.resume();
        this.fail(res, method, 413, `kvnet plugin: ${method}: request body of ${declared} bytes exceeds ${this.maxBodyBytes}`, true);
        return;
      }
      const body = await this.readBody(req);
      if (body === undefined) {
        // a chunked body over the limit: answer, then drop the connection instead of reading on
        res.once('finish', () => req.socket.destroy());
        this.fail(res, method, 413, `kvnet plugin: ${method}: request body exceeds ${this.maxBodyBytes} bytes`, true);
        return;
      }
      const answer = await dispatchPluginCall(method, body, this.opts.handlers);
      if (answer.error !== undefined || answer.status !== 200) log.warn({ method, status: answer.status, err: answer.error, answer: answer.body }, 'Docker plugin call failed');
      else log.debug({ method }, 'Docker plugin call');
      this.send(res, answer.status, answer.body);
    } catch (err) {
      // a client that went away mid-body, or a bug: answer if still possible, never crash
      log.warn({ method, err }, 'Docker plugin request failed');
      if (!res.headersSent && !res.destroyed) this.fail(res, method, 500, `kvnet plugin: ${method}: ${(err as Error).message}`);
    }
  }
}
