/**
 * The plugin's calls to the local agent: JSON over the agent's unix socket through the one unix-socket
 * HTTP layer (`@kvnet/agent/unix-http`; nothing else of the agent is loaded, so the plugin starts fast).
 * Transport failures and refusals become {@link CniError}s naming the socket, the network and the value.
 */

import { unixRequest, UnixHttpError } from '@kvnet/agent/unix-http';
import { CniError } from './errors.ts';
import { ErrorCode } from './spec.ts';

/** How long one call may take: an ADD allocates by compare-and-swap and waits for the data plane. */
export const AGENT_CALL_TIMEOUT_MS = 60_000;

/** An answer of the agent. */
export interface AgentAnswer {
  readonly status: number;
  readonly body: unknown;
}

/** The agent's error body: `{error, code}`. */
function agentMessage(body: unknown): { error: string; code: string } {
  const b = (body ?? {}) as { error?: unknown; code?: unknown };
  return { error: typeof b.error === 'string' ? b.error : JSON.stringify(body) ?? 'no answer', code: typeof b.code === 'string' ? b.code : 'unknown' };
}

export class AgentClient {
  constructor(
    readonly socket: string,
    private readonly timeoutMs = AGENT_CALL_TIMEOUT_MS,
  ) {}

  /**
   * One call. Rejects with a CniError when the agent cannot be reached (code 11 — try again later —
   * when nothing listens or it does not answer in time; 5 for other socket errors such as permission).
   */
  async call(method: string, path: string, body?: unknown): Promise<AgentAnswer> {
    try {
      const r = await unixRequest({ socketPath: this.socket, method, path, ...(body !== undefined ? { body } : {}), timeoutMs: this.timeoutMs });
      return { status: r.status, body: r.body };
    } catch (err) {
      if (err instanceof UnixHttpError) {
        const transient = err.code === 'KVNET_TIMEOUT' || err.errno === 'ECONNREFUSED' || err.errno === 'ENOENT';
        const why = err.errno === 'ENOENT' ? 'no such socket' : err.errno === 'ECONNREFUSED' ? 'nothing listens on it' : err.message;
        throw new CniError(
          transient ? ErrorCode.TRY_AGAIN_LATER : ErrorCode.IO_FAILURE,
          `the kvnet agent is not reachable on ${this.socket}: ${why}`,
          `is the agent running (kvnet agent --socket ${this.socket})? The "socket" field of the CNI configuration names its socket`,
        );
      }
      throw err;
    }
  }

  /**
   * The CniError for an answer the agent refused (`what`: the operation, naming network and value).
   * 400 → invalid configuration (7), 404 → invalid configuration (the network does not exist, 7),
   * 409 → conflict (100), 503 → try again later (11), anything else → the agent failed (102).
   */
  static refusal(answer: AgentAnswer, what: string, socket: string): CniError {
    const { error, code } = agentMessage(answer.body);
    const details = `the kvnet agent on ${socket} answered ${answer.status} ${code}`;
    switch (answer.status) {
      case 400:
      case 404:
      case 413:
        return new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `${what}: ${error}`, details);
      case 409:
        return new CniError(ErrorCode.CONFLICT, `${what}: ${error}`, details);
      case 503:
        return new CniError(ErrorCode.TRY_AGAIN_LATER, `${what}: ${error}`, details);
      default:
        return new CniError(ErrorCode.AGENT_FAILED, `${what}: ${error}`, details);
    }
  }
}
