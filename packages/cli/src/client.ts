/** The client side of the agent's local API: HTTP/1.1 JSON over the agent's unix socket. */

// The HTTP layer only: client commands must not load the agent (store backends, data plane).
import { unixRequest, type UnixHttpError } from '@kvnet/agent/unix-http';

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
    let res;
    try {
      res = await unixRequest({ socketPath: this.socketPath, method, path, body, timeoutMs: REQUEST_TIMEOUT_MS });
    } catch (err) {
      const e = err as UnixHttpError;
      if (e.code === 'KVNET_TIMEOUT') throw new ApiError(`the kvnet agent at ${this.socketPath} did not answer within ${REQUEST_TIMEOUT_MS / 1000}s`, 0, 'KVNET_TIMEOUT');
      const why =
        e.errno === 'ENOENT' || e.errno === 'ECONNREFUSED'
          ? 'is the agent running? (start it with `kvnet agent`, or pass --socket)'
          : e.errno === 'EACCES'
            ? 'permission denied (the socket is for root only)'
            : e.message;
      throw new ApiError(`cannot reach the kvnet agent at ${this.socketPath}: ${why}`, 0, 'KVNET_AGENT_UNREACHABLE');
    }
    if (res.status >= 200 && res.status < 300) return (typeof res.body === 'string' ? undefined : res.body) as T;
    const e = typeof res.body === 'object' ? (res.body as { error?: string; code?: string } | undefined) : undefined;
    throw new ApiError(e?.error ?? `agent answered HTTP ${res.status}: ${res.text.slice(0, 200)}`, res.status, e?.code ?? 'KVNET_HTTP');
  }
}
