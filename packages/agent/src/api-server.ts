/**
 * The local API: HTTP/1.1 JSON over a unix socket that only root can use (socket 0600, its directory
 * 0700 when the agent creates it). A stale socket file is replaced only after nobody answered on it.
 * Errors are `{"error": "<human message>", "code": "<machine code>"}` with a status from the error's
 * kind: invalid 400, not-found 404, conflict/exhausted 409, unavailable 503, anything else 500.
 */

import { mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { connectSchema, createNetworkSchema, validate } from './api-schemas.ts';
import { errorCode, errorKind, InvalidConfigError, InvalidInputError } from './errors.ts';
import type { NetworkService } from './network-service.ts';

export const MAX_BODY_BYTES = 1024 * 1024;
const PROBE_TIMEOUT_MS = 1_000;

export interface StatusSource {
  status(): Record<string, unknown>;
  nodes(): Array<Record<string, unknown>>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** HTTP status of an error, from its kind (and a few codes the contract fixes). */
export function statusOf(err: unknown): number {
  if (err instanceof HttpError) return err.status;
  if (errorCode(err) === 'KVNET_IPAM_POOL_OVERLAP') return 400;
  switch (errorKind(err)) {
    case 'invalid':
      return 400;
    case 'not-found':
      return 404;
    case 'conflict':
    case 'exhausted':
      return 409;
    case 'unavailable':
      return 503;
    default:
      return 500;
  }
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body larger than ${MAX_BODY_BYTES} bytes`, 'KVNET_BODY_TOO_LARGE');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidInputError(`request body is not valid JSON: ${(err as Error).message}`);
  }
}

function send(res: ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

/** Is something answering on this unix socket? */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const t = setTimeout(() => {
      sock.destroy();
      resolve(true); // accepted but silent: someone holds it
    }, PROBE_TIMEOUT_MS);
    sock.once('connect', () => {
      clearTimeout(t);
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
}

export class ApiServer {
  private server: Server | undefined;

  constructor(
    private readonly opts: { socketPath: string; service: NetworkService; status: StatusSource; logger: Logger },
  ) {}

  async start(): Promise<void> {
    const { socketPath, logger } = this.opts;
    const dir = dirname(socketPath);
    try {
      statSync(dir);
    } catch {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    }
    let existing;
    try {
      existing = statSync(socketPath);
    } catch {
      existing = undefined;
    }
    if (existing) {
      if (!existing.isSocket()) throw new InvalidConfigError(`--socket ${socketPath} exists and is not a socket; refusing to replace it`);
      if (await socketAnswers(socketPath)) throw new InvalidConfigError(`another process is answering on socket ${socketPath}; is an agent already running?`);
      logger.info({ socket: socketPath }, 'replacing stale socket');
      unlinkSync(socketPath);
    }
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        logger.error({ err }, 'API handler failed');
        if (!res.headersSent) send(res, 500, { error: String(err), code: 'KVNET_INTERNAL' });
      });
    });
    server.keepAliveTimeout = 1_000;
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => resolve());
      });
    } finally {
      process.umask(oldMask);
    }
    this.server = server;
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
      unlinkSync(this.opts.socketPath);
    } catch {
      // already gone
    }
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { service, status, logger } = this.opts;
    const url = new URL(req.url ?? '/', 'http://kvnet');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const method = req.method ?? 'GET';
    const started = Date.now();
    try {
      if (parts[0] !== 'v1') throw new HttpError(404, `no such API path: ${url.pathname}`, 'KVNET_NO_ROUTE');
      const [, resource, ref, sub, subRef] = parts;
      if (resource === 'status' && parts.length === 2 && method === 'GET') return send(res, 200, status.status());
      if (resource === 'nodes' && parts.length === 2 && method === 'GET') return send(res, 200, status.nodes());
      if (resource === 'networks') {
        if (parts.length === 2 && method === 'GET') return send(res, 200, service.listNetworks());
        if (parts.length === 2 && method === 'POST') {
          const input = validate(createNetworkSchema, await readBody(req));
          return send(res, 201, await service.createNetwork(input));
        }
        if (parts.length === 3 && method === 'GET') return send(res, 200, service.inspectNetwork(ref!));
        if (parts.length === 3 && method === 'DELETE') {
          await service.deleteNetwork(ref!);
          return send(res, 204);
        }
        if (parts.length === 4 && sub === 'endpoints' && method === 'POST') {
          const input = validate(connectSchema, await readBody(req));
          return send(res, 201, await service.connect(ref!, input));
        }
        if (parts.length === 5 && sub === 'endpoints' && method === 'DELETE') {
          await service.disconnect(ref!, subRef!);
          return send(res, 204);
        }
      }
      throw new HttpError(parts.length > 1 && ['status', 'nodes', 'networks'].includes(resource!) ? 405 : 404, `no such API call: ${method} ${url.pathname}`, 'KVNET_NO_ROUTE');
    } catch (err) {
      const code = statusOf(err);
      const message = err instanceof Error ? err.message : String(err);
      const level = code >= 500 ? 'warn' : 'info';
      logger[level]({ method, path: url.pathname, status: code, code: errorCode(err), ms: Date.now() - started }, message);
      send(res, code, { error: message, code: err instanceof HttpError ? err.code : errorCode(err) });
    }
  }
}

