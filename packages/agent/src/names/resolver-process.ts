/**
 * The long-lived resolver process, as an object: the feed socket, the listeners, the responder and its
 * table. It answers from the last table it was given whether or not an agent is connected; it holds no
 * store client and nothing of the agent beyond this folder. `resolver-main.ts` runs one.
 *
 * ```ts
 * const r = new ResolverProcess({ socketPath, logger });
 * await r.start();         // throws ResolverRunningError when another one answers on the socket
 * …                        // fed over the socket
 * await r.stop(false);     // closes sockets; `true` also removes the addresses it added
 * ```
 */

import { chmodSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { AgentError } from '../errors.ts';
import { FEED_PROTOCOL, LineChannel, type FeedReply, type FeedRequest } from './feed-protocol.ts';
import { compileTable, patchTable, type CompiledTable } from './name-lookup.ts';
import { validateNamePatch, validateNameTable } from './name-table.ts';
import { InvalidNameTableError } from './errors.ts';
import type { ListenerReport, NamespaceListener, ResolverSettings, ResolverStatus } from './names.ts';
import { HOST_KEY, ListenerSet, type ListenerSpec } from './listeners.ts';
import { Responder } from './responder.ts';
import { checkSettings } from './settings.ts';
import { Forwarder, parseUpstream, UpstreamList } from './upstream.ts';

/** How often namespaces are checked for having been deleted or re-created, and failed listeners retried. */
export const RECHECK_INTERVAL_MS = 2_000;
/** How long a probe of an existing socket file waits before calling it stale. */
const PROBE_TIMEOUT_MS = 1_000;

/** Another resolver process already answers on the socket. */
export class ResolverRunningError extends AgentError {
  readonly code = 'KVNET_DNS_RESOLVER_RUNNING';
  readonly kind = 'conflict';
}

function probe(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const t = setTimeout(() => {
      sock.destroy();
      resolve(false);
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

export interface ResolverProcessOptions {
  readonly socketPath: string;
  readonly logger: Logger;
  /** Called after an `exit` request has been answered and everything is closed (main exits the process). */
  readonly onExitRequested?: () => void;
  /**
   * Called after the resolver stopped because its feed socket file was removed or replaced (main exits
   * the process). Default: the same as {@link onExitRequested}.
   */
  readonly onOrphaned?: () => void;
}

/** The socket file's identity (device and inode), or undefined when it is gone. */
function fileIdentity(path: string): string | undefined {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

export class ResolverProcess {
  private server: Server | undefined;
  private readonly channels = new Set<LineChannel>();
  private readonly responder: Responder;
  private readonly listeners: ListenerSet;
  private upstreams: UpstreamList = new UpstreamList([], '/etc/resolv.conf', '');
  private settingsKey = '';
  private tableAt: string | undefined;
  /** The table in use (the responder's), patched in place. */
  private compiled: CompiledTable | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt = new Date().toISOString();
  private stopping = false;
  /** Identity of the socket file this process listens on (see {@link checkSocket}). */
  private socketIdentity: string | undefined;

  constructor(private readonly opts: ResolverProcessOptions) {
    this.responder = new Responder(new Forwarder({ upstreams: () => this.upstreams.servers() }));
    this.listeners = new ListenerSet(this.responder, opts.logger);
  }

  /** Listens on the feed socket (0600). A stale socket file is replaced; a live one means another resolver runs. */
  async start(): Promise<void> {
    const path = this.opts.socketPath;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    if (await probe(path)) throw new ResolverRunningError(`another kvnet resolver already answers on ${path}`);
    try {
      unlinkSync(path);
    } catch {
      // no stale file
    }
    const server = createServer((sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    this.server = server;
    this.socketIdentity = fileIdentity(path);
    this.timer = setInterval(() => {
      if (!this.checkSocket()) return;
      void this.listeners.recheck().catch((err: Error) => this.opts.logger.warn({ err: err.message }, 'listener recheck failed'));
    }, RECHECK_INTERVAL_MS);
    this.opts.logger.info({ socket: path }, 'kvnet resolver ready');
  }

  /**
   * A resolver whose socket file was removed (its run directory deleted) or replaced (another resolver
   * started on the same path) can no longer be fed or told to exit by any agent: it stops, leaving the
   * addresses alone (a successor may be using them), instead of holding port 53 in the overlay
   * namespaces against its successor. False when it is stopping.
   */
  private checkSocket(): boolean {
    if (this.stopping) return false;
    const now = fileIdentity(this.opts.socketPath);
    if (now === this.socketIdentity) return true;
    this.opts.logger.warn({ socket: this.opts.socketPath, gone: now === undefined }, 'the feed socket file was removed or replaced; this resolver can no longer be reached and stops');
    void this.stop(false, false).finally(() => (this.opts.onOrphaned ?? this.opts.onExitRequested)?.());
    return false;
  }

  /**
   * Closes the feed and every listener; `cleanup` also removes the addresses it added. `removeSocket`
   * false (an orphaned resolver) leaves the socket path alone.
   */
  async stop(cleanup: boolean, removeSocket = true): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    for (const c of this.channels) c.close();
    const server = this.server;
    if (removeSocket) {
      if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
      try {
        unlinkSync(this.opts.socketPath);
      } catch {
        // already gone
      }
    } else {
      // Closing a unix server unlinks its path (libuv), which may now be a successor's socket: leave
      // the server open; the process exits right after.
      server?.unref();
    }
    await this.listeners.closeAll(cleanup);
    this.opts.logger.info({ cleanup }, 'kvnet resolver stopped');
  }

  status(): ResolverStatus {
    return {
      pid: process.pid,
      startedAt: this.startedAt,
      rssMiB: Math.round((process.memoryUsage().rss / 1024 / 1024) * 10) / 10,
      ...(this.tableAt ? { tableAt: this.tableAt } : {}),
      records: [...(this.compiled?.networks.values() ?? [])].reduce((sum, n) => sum + n.size, 0),
      listeners: this.listeners.reports(new Map()),
      counters: this.responder.counters(),
    };
  }

  private accept(sock: Socket): void {
    const channel: LineChannel = new LineChannel(
      sock,
      (message) => void this.handle(channel, message as FeedRequest),
      (reason) => {
        this.channels.delete(channel);
        if (reason) this.opts.logger.warn({ err: reason.message }, 'feed connection dropped');
      },
    );
    this.channels.add(channel);
  }

  private async handle(channel: LineChannel, req: FeedRequest): Promise<void> {
    const seq = typeof req?.seq === 'number' ? req.seq : undefined;
    const reply = (r: FeedReply): void => channel.send(r);
    try {
      switch (req?.op) {
        case 'hello':
          reply({ op: 'hello', seq: req.seq, pid: process.pid, startedAt: this.startedAt, protocol: FEED_PROTOCOL });
          return;
        case 'patch':
          this.patch(req.patch);
          reply({ op: 'patched', seq: req.seq });
          return;
        case 'status':
          reply({ op: 'status', seq: req.seq, status: this.status() });
          return;
        case 'update': {
          const report = await this.update(req.settings, req.table, req.listeners);
          reply({ op: 'updated', seq: req.seq, report: { listeners: report } });
          return;
        }
        case 'exit':
          reply({ op: 'exiting', seq: req.seq });
          channel.end();
          await this.stop(req.cleanup !== false);
          this.opts.onExitRequested?.();
          return;
        default:
          reply({ op: 'error', ...(seq !== undefined ? { seq } : {}), message: `unknown request ${JSON.stringify((req as { op?: unknown })?.op)}`, code: 'KVNET_DNS_BAD_REQUEST' });
      }
    } catch (err) {
      const code = typeof (err as { code?: unknown }).code === 'string' ? (err as { code: string }).code : 'KVNET_DNS_BAD_REQUEST';
      reply({ op: 'error', ...(seq !== undefined ? { seq } : {}), message: (err as Error).message, code });
    }
  }

  /** Changes records of the table in use; refused (nothing changed) without a table or for a network it lacks. */
  private patch(patchIn: unknown): void {
    const patch = validateNamePatch(patchIn);
    if (!this.compiled) throw new InvalidNameTableError('name patch: this resolver holds no table yet; send the whole table');
    patchTable(this.compiled, patch);
    this.tableAt = new Date().toISOString();
  }

  /** Table first (in use at once), then the listeners. A bad table or bad settings change nothing. */
  private async update(settingsIn: unknown, tableIn: unknown, listenersIn: unknown): Promise<ListenerReport[]> {
    const settings = checkSettings((settingsIn ?? {}) as Record<string, unknown>);
    const table = validateNameTable(tableIn);
    if (!Array.isArray(listenersIn) || !listenersIn.every((l) => l && typeof l.network === 'string' && typeof l.netns === 'string' && l.netns.startsWith('/'))) {
      throw new Error('listeners must be a list of {network, netns} with absolute netns paths');
    }
    const key = JSON.stringify([settings.upstreams, settings.resolvConf, settings.address]);
    if (key !== this.settingsKey) {
      this.upstreams = new UpstreamList(settings.upstreams.map(parseUpstream), settings.resolvConf, settings.address);
      this.settingsKey = key;
    }
    this.compiled = compileTable(table);
    this.responder.setTable(this.compiled);
    this.tableAt = new Date().toISOString();
    const specs: ListenerSpec[] = (listenersIn as NamespaceListener[]).map((l) => ({ key: l.netns, network: l.network, address: settings.address }));
    if (settings.hostListener) specs.push({ key: HOST_KEY, address: settings.address });
    return this.listeners.reconcile(specs);
  }
}
