/**
 * The agent's side of the names face: {@link startNames} finds the resolver process on its socket, or
 * starts one (detached, so it outlives the agent), and feeds it. A new agent finds the one its
 * predecessor started and carries on with it; one of another feed protocol (an upgrade) is told to exit
 * and replaced. If the resolver process goes away while the agent runs, the next update (or the
 * reconnect loop) starts another and sends it the last table again.
 */

import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidConfigError } from '../errors.ts';
import { InvalidNameTableError, ResolverUnavailableError } from './errors.ts';
import { FEED_PROTOCOL, LineChannel, type FeedReply, type FeedRequest } from './feed-protocol.ts';
import { DEFAULT_RESOLVER_SOCKET, type NamePatch, type NamespaceListener, type NameTable, type Names, type NamesContext, type ResolverSettings, type ResolverStatus, type UpdateReport } from './names.ts';
import { EXIT_ALREADY_RUNNING } from './resolver-exit-codes.ts';
import { checkSettings } from './settings.ts';

/** Waiting for a just-started resolver process to answer on its socket. */
export const START_TIMEOUT_MS = 10_000;
/** hello, status, exit. */
export const REQUEST_TIMEOUT_MS = 5_000;
/** An update opens listeners (one short-lived child per new namespace, four at a time). */
export const UPDATE_TIMEOUT_MS = 120_000;
/** Waiting for an exiting resolver process to be gone before SIGKILL. */
export const EXIT_TIMEOUT_MS = 10_000;
/** Reconnecting after the resolver process went away: first pause, doubling up to the cap. */
export const RECONNECT_FIRST_MS = 250;
export const RECONNECT_MAX_MS = 5_000;
const POLL_MS = 50;

/** The bundled resolver's file name (scripts/build.mjs writes it next to `kvnet.mjs`). */
export const RESOLVER_BUNDLE = 'kvnet-resolver.mjs';
/** Node flags for the bundled resolver: a 1 MiB young generation keeps its RSS down (README.md, measured). */
export const RESOLVER_NODE_FLAGS = ['--max-semi-space-size=1'];

/**
 * How to start the resolver process from here: through tsx from sources, or the bundle's
 * `kvnet-resolver.mjs` — next to the file this code was bundled into, or one directory up (a bundle
 * split into chunks keeps its code in a subdirectory).
 */
export function defaultResolverCommand(): string[] {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return [process.execPath, '--import', import.meta.resolve('tsx'), join(dirname(here), 'resolver-main.ts')];
  const beside = join(dirname(here), RESOLVER_BUNDLE);
  const bundle = existsSync(beside) ? beside : join(dirname(dirname(here)), RESOLVER_BUNDLE);
  return [process.execPath, ...RESOLVER_NODE_FLAGS, bundle];
}

function tryConnect(path: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const sock = connect(path);
    sock.once('connect', () => {
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', () => resolve(undefined));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

class NamesClient implements Names {
  private channel: LineChannel | undefined;
  /** The channel that completed hello: losing it (not a probe's) means the resolver went away. */
  private established: LineChannel | undefined;
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (r: FeedReply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private last: { table: NameTable; listeners: readonly NamespaceListener[] } | undefined;
  /** The connection on which {@link last} was accepted: patches apply to it only. */
  private lastOn: LineChannel | undefined;
  private readonly reconnectListeners: Array<() => void> = [];
  private connecting: Promise<void> | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectDelay = RECONNECT_FIRST_MS;
  private stopped = false;
  resolverPid = 0;
  startedResolver = false;

  constructor(
    private readonly ctx: NamesContext,
    private readonly settings: ResolverSettings,
    private readonly socketPath: string,
  ) {}

  /** Connects to a running resolver process, or starts one and connects. */
  ensureConnected(): Promise<void> {
    if (this.channel && !this.channel.isClosed) return Promise.resolve();
    this.connecting ??= this.connectOrStart().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async connectOrStart(): Promise<void> {
    if (await this.attach()) return;
    await this.startResolver();
  }

  /** Connects and says hello; false when nobody (compatible) answers. */
  private async attach(): Promise<boolean> {
    const sock = await tryConnect(this.socketPath);
    if (!sock) return false;
    const channel: LineChannel = new LineChannel(sock, (m) => this.receive(m as FeedReply), () => this.closed(channel));
    this.channel = channel;
    let hello: FeedReply;
    try {
      hello = await this.request({ op: 'hello', seq: 0 }, REQUEST_TIMEOUT_MS);
      if (hello.op !== 'hello') throw new ResolverUnavailableError(`kvnet resolver on ${this.socketPath} answered hello with ${hello.op}`);
    } catch (err) {
      // A resolver that does not say hello is not one to feed: drop the connection, so the next try starts afresh.
      channel.close();
      throw err;
    }
    if (hello.protocol !== FEED_PROTOCOL) {
      this.ctx.logger.warn({ pid: hello.pid, protocol: hello.protocol, want: FEED_PROTOCOL }, 'replacing a kvnet resolver of another version');
      await this.request({ op: 'exit', seq: 0, cleanup: false }, REQUEST_TIMEOUT_MS).catch(() => undefined);
      await this.waitGone(hello.pid);
      return false;
    }
    this.resolverPid = hello.pid;
    this.established = channel;
    this.reconnectDelay = RECONNECT_FIRST_MS;
    this.ctx.logger.info({ pid: hello.pid, since: hello.startedAt }, 'connected to the kvnet resolver');
    return true;
  }

  private async startResolver(): Promise<void> {
    const command = this.ctx.resolverCommand ?? defaultResolverCommand();
    const logPath = this.ctx.resolverLog ?? join(dirname(this.socketPath), 'resolver.log');
    mkdirSync(dirname(this.socketPath), { recursive: true, mode: 0o700 });
    mkdirSync(dirname(logPath), { recursive: true });
    const fd = openSync(logPath, 'a');
    let exit: number | string | undefined;
    try {
      const child = spawn(command[0]!, [...command.slice(1), '--socket', this.socketPath], { detached: true, stdio: ['ignore', fd, fd] });
      child.once('error', (err) => (exit = `spawn error: ${err.message}`));
      child.once('exit', (code, signal) => (exit = code ?? signal ?? 'unknown'));
      child.unref();
    } finally {
      closeSync(fd);
    }
    const deadline = Date.now() + (this.ctx.startTimeoutMs ?? START_TIMEOUT_MS);
    for (;;) {
      // Exit 3: another resolver won the socket meanwhile; exit 0: a launcher that returns once it has
      // started the resolver elsewhere (`systemd-run …`). Either way, keep trying to connect.
      if (exit !== undefined && exit !== 0 && exit !== EXIT_ALREADY_RUNNING) {
        throw new ResolverUnavailableError(`the kvnet resolver (${command.join(' ')}) exited ${exit} at start; see ${logPath}`);
      }
      if (await this.attach()) {
        this.startedResolver = true;
        this.ctx.logger.info({ pid: this.resolverPid, log: logPath }, 'started the kvnet resolver');
        return;
      }
      if (Date.now() > deadline) throw new ResolverUnavailableError(`the kvnet resolver did not answer on ${this.socketPath} within ${this.ctx.startTimeoutMs ?? START_TIMEOUT_MS} ms; see ${logPath}`);
      await sleep(POLL_MS);
    }
  }

  private request(req: FeedRequest, timeoutMs: number): Promise<FeedReply> {
    const channel = this.channel;
    if (!channel || channel.isClosed) return Promise.reject(new ResolverUnavailableError(`not connected to the kvnet resolver on ${this.socketPath}`));
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new ResolverUnavailableError(`the kvnet resolver on ${this.socketPath} did not answer ${req.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(seq, { resolve, reject, timer });
      channel.send({ ...req, seq } as FeedRequest);
    });
  }

  private receive(reply: FeedReply): void {
    const seq = typeof reply?.seq === 'number' ? reply.seq : -1;
    const p = this.pending.get(seq);
    if (!p) return;
    this.pending.delete(seq);
    clearTimeout(p.timer);
    if (reply.op === 'error') {
      p.reject(reply.code === 'KVNET_DNS_INVALID_TABLE' ? new InvalidNameTableError(reply.message) : reply.code === 'KVNET_INVALID_CONFIG' ? new InvalidConfigError(reply.message) : new ResolverUnavailableError(`the kvnet resolver refused the request: ${reply.message}`));
    } else p.resolve(reply);
  }

  private closed(channel: LineChannel): void {
    if (this.channel === channel) this.channel = undefined;
    const wasEstablished = this.established === channel;
    if (wasEstablished) this.established = undefined;
    for (const [seq, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ResolverUnavailableError(`the connection to the kvnet resolver on ${this.socketPath} closed`));
      this.pending.delete(seq);
    }
    if (!this.stopped && wasEstablished) {
      this.ctx.logger.warn({ pid: this.resolverPid }, 'lost the kvnet resolver; reconnecting');
      this.scheduleReconnect();
    }
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnectTimer) return;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.resume();
    }, this.reconnectDelay);
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, RECONNECT_MAX_MS);
  }

  /** After a lost connection: connect (or start), then send the last table again. */
  private async resume(): Promise<void> {
    try {
      await this.ensureConnected();
      if (this.stopped) return;
      // The feeder knows the current table (the last one sent may have been patched since); without
      // one, send the last table again.
      if (this.reconnectListeners.length > 0) for (const l of this.reconnectListeners) l();
      else if (this.last) await this.send(this.last.table, this.last.listeners);
    } catch (err) {
      this.ctx.logger.warn({ err: (err as Error).message }, 'cannot reach the kvnet resolver; trying again');
      this.scheduleReconnect();
    }
  }

  private async send(table: NameTable, listeners: readonly NamespaceListener[]): Promise<UpdateReport> {
    const channel = this.channel;
    this.lastOn = undefined;
    const r = await this.request({ op: 'update', seq: 0, settings: this.settings, table, listeners }, UPDATE_TIMEOUT_MS);
    if (r.op !== 'updated') throw new ResolverUnavailableError(`the kvnet resolver answered update with ${r.op}`);
    this.lastOn = channel;
    for (const l of r.report.listeners) if (l.state === 'failed') this.ctx.logger.warn({ netns: l.netns, network: l.network, err: l.error }, 'DNS listener failed');
    return r.report;
  }

  async update(table: NameTable, listeners: readonly NamespaceListener[]): Promise<UpdateReport> {
    if (this.stopped) throw new ResolverUnavailableError('names face stopped');
    this.last = { table, listeners };
    await this.ensureConnected();
    return this.send(table, listeners);
  }

  async patch(patch: NamePatch): Promise<void> {
    if (this.stopped) throw new ResolverUnavailableError('names face stopped');
    const channel = this.channel;
    if (!channel || channel.isClosed || channel !== this.lastOn) {
      throw new ResolverUnavailableError(`the kvnet resolver on ${this.socketPath} does not hold the last table (reconnected since); send the whole table`);
    }
    try {
      const r = await this.request({ op: 'patch', seq: 0, patch }, REQUEST_TIMEOUT_MS);
      if (r.op !== 'patched') throw new ResolverUnavailableError(`the kvnet resolver answered patch with ${r.op}`);
    } catch (err) {
      // What the resolver holds is unknown now: only a whole table may follow.
      if (this.lastOn === channel) this.lastOn = undefined;
      throw err;
    }
  }

  onReconnect(listener: () => void): void {
    this.reconnectListeners.push(listener);
  }

  async status(): Promise<ResolverStatus> {
    await this.ensureConnected();
    const r = await this.request({ op: 'status', seq: 0 }, REQUEST_TIMEOUT_MS);
    if (r.op !== 'status') throw new ResolverUnavailableError(`the kvnet resolver answered status with ${r.op}`);
    return r.status;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    await this.connecting?.catch(() => undefined);
    const channel = this.channel;
    this.channel = undefined;
    channel?.close();
    for (const [seq, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ResolverUnavailableError('names face stopped'));
      this.pending.delete(seq);
    }
  }

  async shutdown(options: { cleanup?: boolean } = {}): Promise<void> {
    if (this.stopped) throw new ResolverUnavailableError('names face stopped');
    await this.ensureConnected();
    const pid = this.resolverPid;
    const r = await this.request({ op: 'exit', seq: 0, cleanup: options.cleanup !== false }, REQUEST_TIMEOUT_MS);
    if (r.op !== 'exiting') throw new ResolverUnavailableError(`the kvnet resolver answered exit with ${r.op}`);
    await this.stop();
    await this.waitGone(pid);
  }

  private async waitGone(pid: number): Promise<void> {
    const deadline = Date.now() + EXIT_TIMEOUT_MS;
    while (alive(pid)) {
      if (Date.now() > deadline) {
        this.ctx.logger.warn({ pid }, 'the kvnet resolver did not exit; killing it');
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        return;
      }
      await sleep(POLL_MS);
    }
  }
}

/**
 * Starts the names face: checks the settings (throws `InvalidConfigError` naming a bad address or
 * upstream), then connects to the resolver process or starts one. Rejects with
 * `ResolverUnavailableError` when none can be reached or started.
 */
export async function startNames(ctx: NamesContext): Promise<Names> {
  const settings = checkSettings({
    address: ctx.address,
    upstreams: ctx.upstreams,
    resolvConf: ctx.resolvConf,
    hostListener: ctx.hostListener,
  });
  const socketPath = ctx.socketPath ?? DEFAULT_RESOLVER_SOCKET;
  if (!socketPath.startsWith('/')) throw new InvalidConfigError(`resolver socket ${JSON.stringify(socketPath)} is not an absolute path`);
  const client = new NamesClient(ctx, settings, socketPath);
  try {
    await client.ensureConnected();
  } catch (err) {
    await client.stop();
    throw err;
  }
  return client;
}
