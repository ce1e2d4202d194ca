/**
 * Talking to a running resolver process without an agent and without starting one: its status, and
 * telling it to exit — `kvnet dns status|stop` (uninstalling kvnet from a host: the resolver exits and
 * removes the addresses it added), and test harnesses cleaning up after agents they stopped.
 */

import { connect } from 'node:net';
import { ResolverUnavailableError } from './errors.ts';
import { FEED_PROTOCOL, LineChannel, type FeedReply, type FeedRequest } from './feed-protocol.ts';
import type { ResolverStatus } from './names.ts';

/** One request's budget (an exit waits for the listeners to close, a few ms each). */
export const CONTROL_TIMEOUT_MS = 10_000;

function ask(socketPath: string, request: FeedRequest, timeoutMs: number): Promise<FeedReply | undefined> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let settled = false;
    const finish = (err: Error | undefined, reply?: FeedReply): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      channel.close();
      if (err) reject(err);
      else resolve(reply);
    };
    const timer = setTimeout(() => finish(new ResolverUnavailableError(`the kvnet resolver on ${socketPath} did not answer ${request.op} within ${timeoutMs} ms`)), timeoutMs);
    const channel: LineChannel = new LineChannel(
      sock,
      (m) => {
        const reply = m as FeedReply;
        if (reply.op === 'hello') {
          if (reply.protocol !== FEED_PROTOCOL) return finish(new ResolverUnavailableError(`the kvnet resolver on ${socketPath} speaks feed protocol ${reply.protocol}, this command ${FEED_PROTOCOL}`));
          channel.send(request);
        } else if (reply.op === 'error') finish(new ResolverUnavailableError(`the kvnet resolver refused ${request.op}: ${reply.message}`));
        else finish(undefined, reply);
      },
      (reason) => {
        // Nobody listening: no resolver runs on this socket.
        if (!settled && reason && ['ENOENT', 'ECONNREFUSED'].includes((reason as NodeJS.ErrnoException).code ?? '')) {
          settled = true;
          clearTimeout(timer);
          resolve(undefined);
        } else finish(new ResolverUnavailableError(`the connection to the kvnet resolver on ${socketPath} closed${reason ? `: ${reason.message}` : ''}`));
      },
    );
    sock.once('connect', () => channel.send({ op: 'hello', seq: 0 }));
  });
}

/** The status of the resolver on `socketPath`; undefined when none runs there. */
export async function resolverStatus(socketPath: string, timeoutMs = CONTROL_TIMEOUT_MS): Promise<ResolverStatus | undefined> {
  const r = await ask(socketPath, { op: 'status', seq: 1 }, timeoutMs);
  if (r === undefined) return undefined;
  if (r.op !== 'status') throw new ResolverUnavailableError(`the kvnet resolver on ${socketPath} answered status with ${r.op}`);
  return r.status;
}

/**
 * Tells the resolver on `socketPath` to exit (`cleanup`, default true: removing the addresses it added)
 * and waits until its process is gone; resolves with its pid, or undefined when none ran.
 */
export async function stopResolver(socketPath: string, options: { cleanup?: boolean; timeoutMs?: number } = {}): Promise<number | undefined> {
  const timeoutMs = options.timeoutMs ?? CONTROL_TIMEOUT_MS;
  const status = await resolverStatus(socketPath, timeoutMs);
  if (!status) return undefined;
  const r = await ask(socketPath, { op: 'exit', seq: 2, cleanup: options.cleanup !== false }, timeoutMs);
  if (r !== undefined && r.op !== 'exiting') throw new ResolverUnavailableError(`the kvnet resolver on ${socketPath} answered exit with ${r.op}`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(status.pid, 0);
    } catch {
      return status.pid;
    }
    if (Date.now() > deadline) throw new ResolverUnavailableError(`the kvnet resolver (pid ${status.pid}) did not exit within ${timeoutMs} ms`);
    await new Promise((r2) => setTimeout(r2, 50));
  }
}
