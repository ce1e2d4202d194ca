/**
 * The Docker plugin server: Docker's remote NetworkDriver + IpamDriver protocol over HTTP on a unix
 * socket, by default `/run/docker/plugins/kvnet.sock` — dockerd finds a v1 plugin by that file name
 * (plugin name `kvnet`: `docker network create -d kvnet --ipam-driver kvnet …`).
 *
 * The socket is mode 0660 (dockerd runs as root); a stale socket is replaced by unix-http.ts's rule. A
 * call never crashes the server: oversized bodies (refused before they are read whole), malformed JSON
 * and handler errors are answered in the field Docker reads.
 */

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { readBody, sendJson, listenUnix, MAX_BODY_BYTES, type UnixServer } from '../unix-http.ts';
import { dispatchPluginCall, errorField, PLUGIN_CONTENT_TYPE, type PluginHandlers } from './protocol.ts';

export const PLUGIN_SOCKET_MODE = 0o660;

export interface DockerPluginServerOptions {
  readonly socketPath: string;
  readonly handlers: PluginHandlers;
  readonly logger: Logger;
  /** Largest request body; default {@link MAX_BODY_BYTES}. */
  readonly maxBodyBytes?: number;
}

export class DockerPluginServer {
  private server: UnixServer | undefined;

  constructor(private readonly opts: DockerPluginServerOptions) {}

  get socketPath(): string {
    return this.opts.socketPath;
  }

  async start(): Promise<void> {
    this.server = await listenUnix(this.opts.socketPath, (req, res) => void this.handle(req, res), {
      mode: PLUGIN_SOCKET_MODE,
      what: 'the Docker plugin (--docker-plugin)',
      logger: this.opts.logger,
    });
    this.opts.logger.info({ socket: this.opts.socketPath }, 'Docker plugin listening');
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    await server?.close();
  }

  /** Non-200 answers: Docker's generic plugin client reads `Err`; IPAM's 200 answers use `Error`, so IPAM gets both. */
  private fail(res: ServerResponse, method: string, status: number, message: string, close = false): void {
    sendJson(res, status, errorField(method) === 'Error' ? { Err: message, Error: message } : { Err: message }, { contentType: PLUGIN_CONTENT_TYPE, close });
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
      let body: string;
      try {
        body = await readBody(req, this.opts.maxBodyBytes ?? MAX_BODY_BYTES);
      } catch (err) {
        if ((err as { code?: string }).code !== 'KVNET_BODY_TOO_LARGE') throw err;
        // answer, then drop the connection instead of reading on
        res.once('finish', () => req.socket.destroy());
        this.fail(res, method, 413, `kvnet plugin: ${method}: ${(err as Error).message}`, true);
        return;
      }
      const answer = await dispatchPluginCall(method, body, this.opts.handlers);
      if (answer.error !== undefined || answer.status !== 200) log.warn({ method, status: answer.status, err: answer.error, answer: answer.body }, 'Docker plugin call failed');
      else log.debug({ method }, 'Docker plugin call');
      sendJson(res, answer.status, answer.body, { contentType: PLUGIN_CONTENT_TYPE });
    } catch (err) {
      // a client that went away mid-body, or a bug: answer if still possible, never crash
      log.warn({ method, err }, 'Docker plugin request failed');
      if (!res.headersSent && !res.destroyed) this.fail(res, method, 500, `kvnet plugin: ${method}: ${(err as Error).message}`);
    }
  }
}
