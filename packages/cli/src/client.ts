/** The client side of the agent's local API: HTTP/1.1 JSON over the agent's unix socket. */

import { request } from 'node:http';

/** How long one API call may take (a connect waits for its data plane work). */
export const REQUEST_TIMEOUT_MS = 120_000;

/** An error answer of the agent, or a failure to reach it; `message` is for people. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export class ApiClient {
  constructor(readonly socketPath: string) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          path,
          method,
          headers: {
            accept: 'application/json',
            ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
          },
          timeout: REQUEST_TIMEOUT_MS,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = undefined;
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve(parsed as T);
            else {
              const e = parsed as { error?: string; code?: string } | undefined;
              reject(new ApiError(e?.error ?? `agent answered HTTP ${status}: ${text.slice(0, 200)}`, status, e?.code ?? 'KVNET_HTTP'));
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new ApiError(`the kvnet agent at ${this.socketPath} did not answer within ${REQUEST_TIMEOUT_MS / 1000}s`, 0, 'KVNET_TIMEOUT')));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err instanceof ApiError) return reject(err);
        const why =
          err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
            ? 'is the agent running? (start it with `kvnet agent`, or pass --socket)'
            : err.code === 'EACCES'
              ? 'permission denied (the socket is for root only)'
              : err.message;
        reject(new ApiError(`cannot reach the kvnet agent at ${this.socketPath}: ${why}`, 0, 'KVNET_AGENT_UNREACHABLE'));
      });
      req.end(payload);
    });
  }
}
