/**
 * The resolver process's listeners: one UDP socket and one TCP server on `<address>:53` per overlay
 * namespace it is told about, plus one in its own (host) namespace. {@link ListenerSet.reconcile} makes
 * the open set equal to the wanted set: opens what is missing (address first, then sockets), closes
 * what is no longer wanted, and re-opens a listener whose namespace was deleted and made again at the
 * same path (its sockets would otherwise sit in the dead namespace, and keep it alive).
 */

import type { Socket as UdpSocket } from 'node:dgram';
import type { Server, Socket } from 'node:net';
import type { Logger } from 'pino';
import { HEADER_BYTES, MAX_MESSAGE_BYTES } from './dns-codec.ts';
import type { ListenerRef } from './name-lookup.ts';
import type { ListenerReport } from './names.ts';
import { bindHere, bindInNamespace, type BoundSockets } from './netns-sockets.ts';
import { ensureLoopbackAddress, netnsIdentity, removeLoopbackAddress } from './resolver-address.ts';
import type { QueryOrigin, Responder } from './responder.ts';
import { DNS_PORT } from './upstream.ts';

/** Listeners opened at once (each open starts one short-lived Node child). */
export const OPEN_CONCURRENCY = 4;
/** A TCP client silent this long is disconnected (RFC 7766 suggests seconds, not minutes). */
export const TCP_IDLE_TIMEOUT_MS = 10_000;
/** TCP connections per listener at once; more are refused by the kernel's backlog, then reset. */
export const TCP_MAX_CONNECTIONS = 256;
/** Queries of one TCP connection being answered at once; reading pauses beyond that. */
export const TCP_MAX_PENDING = 16;
/**
 * A listener that failed is retried by {@link ListenerSet.recheck} after this, doubling per failure up to
 * the cap (an update retries at once; a namespace that does not exist is retried every RETRY_FIRST_MS).
 */
export const RETRY_FIRST_MS = 2_000;
export const RETRY_MAX_MS = 60_000;
/** The key of the host namespace's listener. */
export const HOST_KEY = 'host';

export interface ListenerSpec {
  /** The namespace path, or {@link HOST_KEY}. */
  readonly key: string;
  /** Overlay listeners: the network. */
  readonly network?: string;
  readonly address: string;
}

interface OpenListener {
  readonly spec: ListenerSpec;
  readonly identity: string | undefined;
  readonly sockets: BoundSockets;
  readonly connections: Set<Socket>;
}

const refOf = (spec: ListenerSpec): ListenerRef => (spec.network === undefined ? { kind: 'host' } : { kind: 'overlay', network: spec.network });

function sameSpec(a: ListenerSpec, b: ListenerSpec): boolean {
  return a.key === b.key && a.network === b.network && a.address === b.address;
}

async function inBatches<T>(items: readonly T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: Math.min(size, queue.length) }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
  }));
}

export class ListenerSet {
  private readonly open = new Map<string, OpenListener>();
  private readonly failed = new Map<string, { spec: ListenerSpec; error: string; retryMs: number; nextAt: number }>();
  private wanted: readonly ListenerSpec[] = [];
  private running: Promise<ListenerReport[]> = Promise.resolve([]);

  constructor(
    private readonly responder: Responder,
    private readonly logger: Logger,
  ) {}

  /** Reconciles to `wanted`, retrying failed listeners at once; calls are serialised. Resolves with one report per wanted listener. */
  reconcile(wanted: readonly ListenerSpec[]): Promise<ListenerReport[]> {
    this.wanted = wanted;
    return this.enqueue(true);
  }

  /**
   * Re-runs the last reconcile when something changed: a namespace gone or re-created, or a failed
   * listener due for another try (backing off). Cheap when nothing did.
   */
  recheck(): Promise<ListenerReport[]> {
    const now = Date.now();
    const changed = this.wanted.some((s) => {
      const o = this.open.get(s.key);
      if (o) return s.key !== HOST_KEY && netnsIdentity(s.key) !== o.identity;
      return (this.failed.get(s.key)?.nextAt ?? 0) <= now;
    });
    return changed ? this.enqueue(false) : Promise.resolve(this.reports(new Map()));
  }

  private enqueue(retryNow: boolean): Promise<ListenerReport[]> {
    this.running = this.running.catch(() => []).then(() => this.reconcileNow(retryNow));
    return this.running;
  }

  reports(openedMs: ReadonlyMap<string, number>): ListenerReport[] {
    return this.wanted.map((s) => {
      const base = { netns: s.key, ...(s.network !== undefined ? { network: s.network } : {}) };
      if (this.open.has(s.key)) return { ...base, state: 'listening' as const, ...(openedMs.has(s.key) ? { openedMs: openedMs.get(s.key)! } : {}) };
      return { ...base, state: 'failed' as const, error: this.failed.get(s.key)?.error ?? 'not opened yet' };
    });
  }

  /** Closes every listener; with `cleanup`, also removes the addresses it added. */
  async closeAll(cleanup: boolean): Promise<void> {
    this.wanted = [];
    await this.running.catch(() => undefined);
    const all = [...this.open.values()];
    this.open.clear();
    for (const o of all) await this.close(o, cleanup);
  }

  private async reconcileNow(retryNow: boolean): Promise<ListenerReport[]> {
    const wanted = new Map(this.wanted.map((s) => [s.key, s]));
    for (const o of [...this.open.values()]) {
      const w = wanted.get(o.spec.key);
      const gone = o.spec.key !== HOST_KEY && netnsIdentity(o.spec.key) !== o.identity;
      if (!w || !sameSpec(w, o.spec) || gone) {
        this.open.delete(o.spec.key);
        // Still wanted with other settings: remove nothing the re-open will put back anyway.
        await this.close(o, !w && !gone);
        this.logger.info({ netns: o.spec.key, reason: !w ? 'no longer wanted' : gone ? 'namespace gone or re-created' : 'settings changed' }, 'DNS listener closed');
      }
    }
    for (const key of [...this.failed.keys()]) if (!wanted.has(key)) this.failed.delete(key);
    const now = Date.now();
    const toOpen = [...wanted.values()].filter((s) => !this.open.has(s.key) && (retryNow || (this.failed.get(s.key)?.nextAt ?? 0) <= now));
    const openedMs = new Map<string, number>();
    await inBatches(toOpen, OPEN_CONCURRENCY, async (spec) => {
      const t0 = performance.now();
      try {
        const o = await this.openOne(spec);
        this.open.set(spec.key, o);
        this.failed.delete(spec.key);
        openedMs.set(spec.key, Math.round((performance.now() - t0) * 10) / 10);
        this.logger.info({ netns: spec.key, network: spec.network, address: spec.address, ms: openedMs.get(spec.key) }, 'DNS listener open');
      } catch (err) {
        const error = (err as Error).message;
        const before = this.failed.get(spec.key);
        // A namespace that does not exist (yet) costs one stat to try again: no backing off for it.
        const missing = spec.key !== HOST_KEY && netnsIdentity(spec.key) === undefined;
        const retryMs = before && !missing ? Math.min(before.retryMs * 2, RETRY_MAX_MS) : RETRY_FIRST_MS;
        if (before?.error !== error) this.logger.warn({ netns: spec.key, network: spec.network, err: error, retryMs }, 'DNS listener failed; retrying later');
        this.failed.set(spec.key, { spec, error, retryMs, nextAt: Date.now() + retryMs });
      }
    });
    return this.reports(openedMs);
  }

  private async openOne(spec: ListenerSpec): Promise<OpenListener> {
    let sockets: BoundSockets;
    let identity: string | undefined;
    if (spec.key === HOST_KEY) {
      await ensureLoopbackAddress(undefined, spec.address);
      sockets = await bindHere(spec.address, DNS_PORT);
    } else {
      identity = netnsIdentity(spec.key);
      if (!identity) throw new Error(`namespace ${spec.key} does not exist`);
      await ensureLoopbackAddress(spec.key, spec.address);
      sockets = await bindInNamespace(spec.key, spec.address, DNS_PORT);
      if (netnsIdentity(spec.key) !== identity) {
        sockets.udp.close();
        sockets.tcp.close();
        throw new Error(`namespace ${spec.key} was re-created while its listener was being opened`);
      }
    }
    const o: OpenListener = { spec, identity, sockets, connections: new Set() };
    this.serve(o);
    return o;
  }

  private async close(o: OpenListener, cleanup: boolean): Promise<void> {
    try {
      o.sockets.udp.close();
    } catch {
      // already closed
    }
    o.sockets.tcp.close();
    for (const c of o.connections) c.destroy();
    if (!cleanup) return;
    if (o.spec.key === HOST_KEY) await removeLoopbackAddress(undefined, o.spec.address);
    else if (netnsIdentity(o.spec.key) === o.identity) await removeLoopbackAddress(o.spec.key, o.spec.address);
  }

  private serve(o: OpenListener): void {
    const listener = refOf(o.spec);
    const { udp, tcp } = o.sockets;
    udp.on('error', (err) => this.logger.warn({ netns: o.spec.key, err: err.message }, 'DNS UDP socket error'));
    udp.on('message', (packet, rinfo) => {
      const origin: QueryOrigin = { listener, source: rinfo.address, transport: 'udp' };
      void this.responder.handle(packet, origin).then((reply) => {
        if (reply) udp.send(reply, rinfo.port, rinfo.address, () => {});
      }, () => undefined);
    });
    tcp.maxConnections = TCP_MAX_CONNECTIONS;
    tcp.on('error', (err) => this.logger.warn({ netns: o.spec.key, err: err.message }, 'DNS TCP listener error'));
    tcp.on('connection', (sock) => this.serveTcp(o, listener, sock));
  }

  /** RFC 1035 §4.2.2 framing (2-byte length), several queries per connection, answered as they finish. */
  private serveTcp(o: OpenListener, listener: ListenerRef, sock: Socket): void {
    o.connections.add(sock);
    const source = sock.remoteAddress ?? '';
    let buf: Buffer = Buffer.alloc(0);
    let pending = 0;
    sock.setTimeout(TCP_IDLE_TIMEOUT_MS, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('close', () => o.connections.delete(sock));
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len < HEADER_BYTES || len > MAX_MESSAGE_BYTES) {
          // Not a DNS message: nothing after it can be framed either.
          sock.destroy();
          return;
        }
        if (buf.length < 2 + len) break;
        const packet = Buffer.from(buf.subarray(2, 2 + len));
        buf = buf.subarray(2 + len);
        pending++;
        if (pending >= TCP_MAX_PENDING) sock.pause();
        void this.responder.handle(packet, { listener, source, transport: 'tcp' }).then((reply) => {
          pending--;
          if (sock.isPaused() && pending < TCP_MAX_PENDING) sock.resume();
          if (!reply || sock.destroyed) return;
          const head = Buffer.alloc(2);
          head.writeUInt16BE(reply.length, 0);
          sock.write(Buffer.concat([head, reply]));
        }, () => undefined);
      }
    });
  }
}
