/**
 * The feed between the agent and the resolver process: one JSON object per line over a unix socket
 * (mode 0600). The agent asks, the resolver answers each request once, echoing its `seq`.
 *
 * | request | reply |
 * |---|---|
 * | `{op:'hello', seq}` | `{op:'hello', seq, pid, startedAt, protocol}` |
 * | `{op:'update', seq, settings, table, listeners}` | `{op:'updated', seq, report}` once the table is in use and every listener is open or failed |
 * | `{op:'patch', seq, patch}` | `{op:'patched', seq}` once the changed records are in use; an error when the resolver holds no table or not the patch's networks |
 * | `{op:'status', seq}` | `{op:'status', seq, status}` |
 * | `{op:'exit', seq, cleanup}` | `{op:'exiting', seq}`, then the process closes everything and exits |
 * | anything else | `{op:'error', seq, message, code}` |
 */

import type { Socket } from 'node:net';
import type { NamePatch, NameTable, NamespaceListener, ResolverSettings, ResolverStatus, UpdateReport } from './names.ts';

/** Bumped on any incompatible change; an agent that meets a resolver of another protocol replaces it. */
export const FEED_PROTOCOL = 2;
/** Longest line either side accepts (a table of ~100 000 endpoints). */
export const MAX_LINE_BYTES = 64 * 1024 * 1024;

export type FeedRequest =
  | { readonly op: 'hello'; readonly seq: number }
  | { readonly op: 'update'; readonly seq: number; readonly settings: ResolverSettings; readonly table: NameTable; readonly listeners: readonly NamespaceListener[] }
  | { readonly op: 'patch'; readonly seq: number; readonly patch: NamePatch }
  | { readonly op: 'status'; readonly seq: number }
  | { readonly op: 'exit'; readonly seq: number; readonly cleanup: boolean };

export type FeedReply =
  | { readonly op: 'hello'; readonly seq: number; readonly pid: number; readonly startedAt: string; readonly protocol: number }
  | { readonly op: 'updated'; readonly seq: number; readonly report: UpdateReport }
  | { readonly op: 'patched'; readonly seq: number }
  | { readonly op: 'status'; readonly seq: number; readonly status: ResolverStatus }
  | { readonly op: 'exiting'; readonly seq: number }
  | { readonly op: 'error'; readonly seq?: number; readonly message: string; readonly code: string };

/**
 * Newline-delimited JSON on a socket. `onMessage` gets each parsed line; a line that is not JSON, or
 * longer than {@link MAX_LINE_BYTES}, ends the connection (`onClose` with the reason).
 */
export class LineChannel {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private closed = false;

  constructor(
    readonly socket: Socket,
    private readonly onMessage: (message: unknown) => void,
    private readonly onClose: (reason?: Error) => void,
  ) {
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('error', (err) => this.close(err));
    socket.on('close', () => this.close());
  }

  send(message: FeedRequest | FeedReply): void {
    if (!this.closed) this.socket.write(`${JSON.stringify(message)}\n`);
  }

  /** Closes the socket once what was sent has been written. */
  end(): void {
    this.socket.end();
  }

  close(reason?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.onClose(reason);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private receive(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      this.pending.push(chunk.subarray(start, nl));
      const line = Buffer.concat(this.pending).toString('utf8');
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
      if (line.trim() === '') continue;
      let message: unknown;
      try {
        message = JSON.parse(line);
      } catch {
        this.close(new Error('feed: a line that is not JSON'));
        return;
      }
      this.onMessage(message);
      if (this.closed) return;
    }
    if (start < chunk.length) {
      this.pending.push(chunk.subarray(start));
      this.pendingBytes += chunk.length - start;
      if (this.pendingBytes > MAX_LINE_BYTES) this.close(new Error(`feed: a line longer than ${MAX_LINE_BYTES} bytes`));
    }
  }
}
