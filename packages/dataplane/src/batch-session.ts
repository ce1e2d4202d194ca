/**
 * Long-lived `ip -force -batch -` / `bridge -force -batch -` processes, one per (tool, overlay
 * namespace), for the small batches of the incremental path: a peer change is one or two lines, and
 * starting a process for them costs more than the lines (~2 ms of the agent's CPU to fork a Node
 * process of ~100 MiB, ~2 ms for iproute2 to start and enter the namespace, measured on the 2-core
 * development machine) — per event, on every host. A session writes the lines to the running process's
 * stdin, then a sentinel line that always fails without touching anything (`link show dev kvnet/sync`:
 * `/` cannot occur in an interface name); iproute2 runs lines in order and writes a line's error and
 * `Command failed -:N` to stderr (unbuffered) before reading the next, so the sentinel's marker says
 * every line before it is done, and the markers before it say which failed.
 *
 * Checked on iproute2 6.1: a failing `ip neigh` line exits the whole process (exit 2, no marker), as it
 * does in a one-shot batch; the session then reports the batch as failed (`fatal`) and starts a new
 * process next time. A session is bound to the namespace it entered: it checks the namespace file's
 * identity (device and inode) before each batch and starts again when the namespace was replaced, and
 * the data plane closes every session before a full apply (which may delete or recreate namespaces: a
 * live process would keep a deleted namespace, and its VXLAN port, alive). Sessions idle for
 * {@link SESSION_IDLE_MS} end by themselves; the processes never keep the agent's event loop alive, and
 * they end when the agent does (their stdin closes).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { NetnsTarget } from './dataplane.ts';
import { commandIn, runBatch, showCommand, type BatchResult } from './iproute2.ts';

/** A session with nothing to do for this long ends (a new one starts on the next batch). */
export const SESSION_IDLE_MS = 60_000;
/** A batch that has not finished after this long fails, and its process is killed. */
export const SESSION_BATCH_TIMEOUT_MS = 20_000;
/** Read-only, and can never succeed: `/` is not allowed in an interface name. */
const SENTINEL: Readonly<Record<'ip' | 'bridge', string>> = { ip: 'link show dev kvnet/sync', bridge: 'fdb show dev kvnet/sync' };
const FAILED_LINE = /^Command failed -:(\d+)$/;
const NETNS_RUN_DIR = '/run/netns';

interface Pending {
  /** Line numbers (the process's own count, 1-based) of this batch's first line and of its sentinel. */
  readonly first: number;
  readonly sentinel: number;
  readonly failures: Map<number, string>;
  readonly resolve: (r: BatchResult) => void;
  readonly timer: NodeJS.Timeout;
}

/** One running batch process in one namespace. */
class Session {
  private readonly child: ChildProcess;
  private lines = 0;
  private readonly pending: Pending[] = [];
  private reasons: string[] = [];
  private stderrBuf = '';
  private exited = false;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly tool: 'ip' | 'bridge',
    readonly netns: NetnsTarget,
    /** Device and inode of the namespace file when the session started. */
    readonly identity: string,
    private readonly onEnd: (s: Session) => void,
  ) {
    const [cmd, args] = commandIn(netns, tool, ['-force', '-batch', '-']);
    this.child = spawn(cmd, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    // An idle session must not keep its caller alive (a batch in flight does, through its timer).
    this.child.unref();
    for (const pipe of [this.child.stdin, this.child.stderr]) (pipe as Partial<Socket> | null)?.unref?.();
    this.child.stdin!.on('error', () => undefined); // the process died: its exit ends the pending batches
    this.child.stderr!.on('data', (d: Buffer) => this.onStderr(d.toString()));
    this.child.on('error', (err) => this.end(`cannot run ${showCommand([cmd, args])}: ${err.message}`));
    this.child.on('exit', (code, signal) => this.end(`${showCommand([cmd, args])} ended (${code ?? signal})${this.reasons.length > 0 ? `: ${this.reasons.join(' / ')}` : ''}`));
    this.touch();
  }

  get alive(): boolean {
    return !this.exited;
  }

  run(lines: readonly string[]): Promise<BatchResult> {
    return new Promise((resolve) => {
      const first = this.lines + 1;
      this.lines += lines.length + 1;
      // a ref'd timer: the process and its pipes are unref'd, and a batch in flight must keep the caller's event loop alive
      const timer = setTimeout(() => {
        this.end(`timed out after ${SESSION_BATCH_TIMEOUT_MS} ms`);
      }, SESSION_BATCH_TIMEOUT_MS);
      this.pending.push({ first, sentinel: this.lines, failures: new Map(), resolve, timer });
      this.child.stdin!.write(`${[...lines, SENTINEL[this.tool]].join('\n')}\n`);
      this.touch();
    });
  }

  close(): void {
    if (this.exited) return;
    this.child.stdin!.end();
    this.end('closed');
    this.child.kill('SIGKILL');
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.pending.length === 0) this.close();
      else this.touch();
    }, SESSION_IDLE_MS);
    this.idleTimer.unref();
  }

  private onStderr(text: string): void {
    this.stderrBuf += text;
    let i: number;
    while ((i = this.stderrBuf.indexOf('\n')) >= 0) {
      const line = this.stderrBuf.slice(0, i).trim();
      this.stderrBuf = this.stderrBuf.slice(i + 1);
      if (!line) continue;
      const m = FAILED_LINE.exec(line);
      if (!m) {
        this.reasons.push(line);
        continue;
      }
      const n = Number(m[1]);
      const reason = this.reasons.join(' ').replace(/^RTNETLINK answers: /, '').replace(/^Error: /, '').trim() || 'unknown error';
      this.reasons = [];
      const p = this.pending[0];
      if (!p) continue;
      if (n === p.sentinel) {
        this.pending.shift();
        clearTimeout(p.timer);
        p.resolve({ failures: p.failures });
      } else if (n >= p.first) p.failures.set(n - p.first + 1, reason);
    }
  }

  private end(why: string): void {
    if (this.exited) return;
    this.exited = true;
    clearTimeout(this.idleTimer);
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.resolve({ failures: p.failures, fatal: why });
    }
    if (why !== 'closed') this.child.kill('SIGKILL');
    this.onEnd(this);
  }
}

/** The identity (device:inode) of a named namespace's file, or undefined when there is none. */
function namespaceIdentity(name: string): string | undefined {
  try {
    const st = statSync(`${NETNS_RUN_DIR}/${name}`);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * The sessions of one data plane instance. {@link run} has the signature of the executor's batch runner:
 * batches for a named namespace go to that namespace's session, anything else to a one-shot process.
 */
export class BatchSessions {
  private readonly sessions = new Map<string, Session>();

  async run(tool: 'ip' | 'bridge', netns: NetnsTarget, lines: readonly string[]): Promise<BatchResult> {
    if (netns.kind !== 'name') return runBatch(tool, netns, lines);
    const key = `${tool}|${netns.name}`;
    const identity = namespaceIdentity(netns.name);
    if (identity === undefined) return { failures: new Map(), fatal: `network namespace ${netns.name} does not exist` };
    let s = this.sessions.get(key);
    if (s && (!s.alive || s.identity !== identity)) {
      s.close();
      s = undefined;
    }
    if (!s) {
      s = new Session(tool, netns, identity, (ended) => {
        if (this.sessions.get(key) === ended) this.sessions.delete(key);
      });
      this.sessions.set(key, s);
    }
    return s.run(lines);
  }

  /** Running sessions (for tests and metrics). */
  get size(): number {
    return this.sessions.size;
  }

  /** Ends every session (their batches in flight fail). */
  close(): void {
    for (const s of [...this.sessions.values()]) s.close();
    this.sessions.clear();
  }
}
