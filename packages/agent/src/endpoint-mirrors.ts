/**
 * The endpoints part of the agent's live copy of the cluster: which watches cover `endpoints/`.
 *
 * On etcd, ZooKeeper and the embedded store a watch delivers the changes, so one {@link PrefixMirror}
 * over all of `endpoints/` costs each agent O(1) per connect. Consul answers every blocking query with
 * every key of the watched range (`watchReadsWholeRange`): one watch of `endpoints/` makes each
 * connect cost every agent a read and decode of every endpoint of the cluster (2 000 records at
 * 100 hosts × 20). There the endpoints are watched per network (`endpoints/<nid>/`), and a watch
 * that holds more than {@link SPLIT_AT} records is replaced by 16, one per next hex digit of the
 * endpoint id (`startsWith` `0`…`f`, then `a0`…`af` for a part that grows past the limit again, up
 * to {@link MAX_SPLIT_DIGITS} digits): a change then costs each agent the records of one part, about
 * 125 at 2 000 endpoints and at most a few hundred up to 16^3 × 256 endpoints per network. A split
 * stays until the agent restarts. Consul's load grows by one blocking query per small network and
 * one per part of a large one, per agent (16 at 2 000 endpoints; 256 at 50 000). Each is an HTTP
 * connection, and Consul refuses more than `limits.http_max_conns_per_client` (200 by default) from
 * one address: the store's `maxWatches` (`kv.maxwatches`, 160 by default) less the agent's other
 * watches is the budget ({@link EndpointMirrorsOptions.maxWatches}), and a split that would pass it is
 * not made (logged once per watch): that part then costs a read of all its records per change.
 *
 * Per network the rules are:
 * - a network's endpoints enter the view only from listings and watches that are complete: the
 *   network record itself is held back ({@link isReady}) until every watch of the network has listed,
 *   so the view never shows a network without its endpoints (which would tear down what they describe);
 * - a split runs the 16 new watches beside the one they replace, and switches when all have listed:
 *   the view then gets exactly the difference between what the old watch had delivered and what the
 *   new ones hold, never a gap or a flicker;
 * - when the network record goes, its watches stop and its endpoints leave the view. Endpoint records
 *   of a network that has no record (left behind by hand) are not watched on such a store; nothing
 *   of the agent's needs them (the janitor reads the store itself before it deletes anything).
 */

import type { Logger } from 'pino';
import { PrefixMirror, type KVEntry, type KVStore, type WatchEvent } from '@kvnet/store';
import { ENDPOINTS, keys, lastSegment, parseEndpointKey } from './layout.ts';

/** A watch of a network's endpoints is replaced by 16 when it holds more records than this (Consul). */
export const SPLIT_AT = 256;
/** How many leading hex digits of the endpoint id the finest watch covers (16^3 = 4 096 watches at most per network). */
export const MAX_SPLIT_DIGITS = 3;
/** The first characters of an endpoint id: one watch each for a split network. */
const HEX_DIGITS = [...'0123456789abcdef'];

export interface EndpointMirrorsOptions {
  readonly store: KVStore;
  readonly logger: Logger;
  /** Endpoint changes for the view; `resync` when they come from a listing rather than a watch. */
  readonly onEvents: (events: readonly WatchEvent[], resync: boolean) => void;
  /** Every watch of network `nid` has listed: its record may enter the view. */
  readonly onReady: (nid: string) => void;
  /** A watch lost the store (`ok` false) or has it again (`ok` true). */
  readonly onHealth: (prefix: string, ok: boolean, err: unknown) => void;
  /** Watch per network and split large ones; default: when the store's watch answers carry the whole range. */
  readonly perNetwork?: boolean;
  /** Records of one watch beyond which a network is split; default {@link SPLIT_AT}. */
  readonly splitAt?: number;
  /** Endpoint watches this may hold at once, those of a split in progress included; default: no limit. */
  readonly maxWatches?: number;
}

/** The watches of one network: those the view follows, and, for each one being split, the 16 that will replace it. */
interface NetworkWatches {
  readonly current: Set<PrefixMirror>;
  readonly splitting: Map<PrefixMirror, PrefixMirror[]>;
  ready: boolean;
}

export class EndpointMirrors {
  /** One watch of all of `endpoints/` (not per network). */
  private readonly whole: PrefixMirror | undefined;
  private readonly networks = new Map<string, NetworkWatches>();
  private readonly splitAt: number;
  private readonly maxWatches: number;
  /** Watches too large that were not split for lack of budget (each logged once). */
  private readonly declined = new WeakSet<PrefixMirror>();
  private started = false;
  private stopped = false;
  /** Re-lists of watches that have been stopped since. */
  private retiredResyncs = 0;
  private readonly stopping = new Set<Promise<void>>();

  constructor(private readonly opts: EndpointMirrorsOptions) {
    this.splitAt = opts.splitAt ?? SPLIT_AT;
    this.maxWatches = opts.maxWatches ?? Number.POSITIVE_INFINITY;
    const perNetwork = opts.perNetwork ?? opts.store.capabilities.watchReadsWholeRange;
    if (!perNetwork) {
      this.whole = new PrefixMirror(opts.store, ENDPOINTS, {
        logger: opts.logger.child({ component: 'mirror', prefix: ENDPOINTS }),
        onChange: (change) => opts.onEvents(change.events, change.resync),
        onHealth: (ok, err) => opts.onHealth(ENDPOINTS, ok, err),
      });
    }
  }

  /** Whether the endpoints are watched per network (and large networks split). */
  get perNetwork(): boolean {
    return this.whole === undefined;
  }

  start(): void {
    this.started = true;
    this.whole?.start();
    for (const w of this.networks.values()) for (const m of mirrorsOf(w)) m.start();
  }

  /**
   * The networks in the store changed (the `networks/` mirror's events, before they are applied):
   * watches start for new networks and stop, with their endpoints leaving the view, for removed ones.
   */
  networksChanged(events: readonly WatchEvent[]): void {
    if (this.whole || this.stopped) return;
    for (const ev of events) {
      const nid = lastSegment(ev.key);
      if (ev.type === 'put' && !this.networks.has(nid)) this.watchNetwork(nid);
      else if (ev.type === 'delete') this.unwatchNetwork(nid);
    }
  }

  /** Every watch of network `nid` has listed (always true for the single watch of `endpoints/` once it has). */
  isReady(nid: string): boolean {
    if (this.whole) return true;
    return this.networks.get(nid)?.ready ?? false;
  }

  /** How many watches cover network `nid`'s endpoints now (0: not watched; 1: whole; 16 once split; more when parts were split again). */
  watchCount(nid: string): number {
    if (this.whole) return 1;
    return this.networks.get(nid)?.current.size ?? 0;
  }

  /** Every watch running now, in all networks (those being replaced and their replacements included). */
  get watches(): number {
    if (this.whole) return 1;
    let n = 0;
    for (const w of this.networks.values()) n += mirrorsOf(w).length;
    return n;
  }

  /** Whether the view holds `endpoints/<nid>/<eid>`, from the watch that covers it. */
  has(key: string): boolean {
    if (this.whole) return this.whole.view.has(key);
    const k = parseEndpointKey(key);
    if (!k) return false;
    const w = this.networks.get(k.nid);
    if (!w?.ready) return false;
    for (const m of w.current) if (covers(m, k.eid)) return m.view.has(key);
    return false;
  }

  /** Every running watch has the store. */
  get healthy(): boolean {
    if (this.whole) return this.whole.healthy;
    for (const w of this.networks.values()) for (const m of w.current) if (!m.healthy) return false;
    return true;
  }

  get resyncs(): number {
    if (this.whole) return this.whole.resyncs;
    let n = this.retiredResyncs;
    for (const w of this.networks.values()) for (const m of mirrorsOf(w)) n += m.resyncs;
    return n;
  }

  /** Resolves when every watch that exists, including those started meanwhile, has listed. */
  async synced(): Promise<void> {
    if (this.whole) return this.whole.synced;
    for (;;) {
      const pending = [...this.networks.values()].filter((w) => !w.ready).flatMap((w) => [...w.current].map((m) => m.synced));
      if (pending.length === 0) return;
      await Promise.all(pending);
      // the ready callbacks run after the listing's promise; let them run before looking again
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const all: PrefixMirror[] = this.whole ? [this.whole] : [...this.networks.values()].flatMap((w) => mirrorsOf(w));
    await Promise.all([...all.map((m) => m.stop()), ...this.stopping]);
  }

  private mirror(nid: string, startsWith: string | undefined, onChange: (events: readonly WatchEvent[], resync: boolean, m: PrefixMirror) => void): PrefixMirror {
    const prefix = keys.endpointsOf(nid);
    const label = startsWith === undefined ? prefix : `${prefix}/${startsWith}…`;
    const m = new PrefixMirror(this.opts.store, prefix, {
      ...(startsWith === undefined ? {} : { startsWith }),
      logger: this.opts.logger.child({ component: 'mirror', prefix: label }),
      onChange: (change, self) => onChange(change.events, change.resync, self),
      onHealth: (ok, err) => this.opts.onHealth(label, ok, err),
    });
    if (this.started) m.start();
    return m;
  }

  private watchNetwork(nid: string): void {
    const w: NetworkWatches = { current: new Set(), splitting: new Map(), ready: false };
    this.networks.set(nid, w);
    const m = this.mirror(nid, undefined, (events, resync, self) => this.fromWatch(nid, w, self, events, resync));
    w.current.add(m);
    void m.synced.then(() => this.listed(nid, w));
  }

  /**
   * Events of one of network `nid`'s watches: applied when the view follows that watch (before the
   * network is ready too: its record waits for them, not the other way round); a watch that grew
   * past the limit is split.
   */
  private fromWatch(nid: string, w: NetworkWatches, m: PrefixMirror, events: readonly WatchEvent[], resync: boolean): void {
    if (this.stopped || this.networks.get(nid) !== w || !w.current.has(m)) return;
    this.opts.onEvents(events, resync);
    if (m.view.size <= this.splitAt || (m.startsWith ?? '').length >= MAX_SPLIT_DIGITS || w.splitting.has(m)) return;
    if (this.watches + HEX_DIGITS.length <= this.maxWatches) return this.split(nid, w, m);
    if (this.declined.has(m)) return;
    this.declined.add(m);
    this.opts.logger.warn(
      { network: nid, part: `${m.startsWith ?? ''}…`, endpoints: m.view.size, watches: this.watches, maxWatches: this.maxWatches },
      'many endpoints in one watch, but 16 more watches would pass the store\'s limit (kv.maxwatches; on Consul raise it with limits.http_max_conns_per_client): every change in this part reads all of it',
    );
  }

  private listed(nid: string, w: NetworkWatches): void {
    if (this.networks.get(nid) !== w || w.ready) return;
    if (![...w.current].every((m) => m.revision !== undefined)) return;
    w.ready = true;
    this.opts.onReady(nid);
  }

  /** Starts the 16 watches that replace watch `old` of network `nid`, one per next hex digit; switches when all have listed. */
  private split(nid: string, w: NetworkWatches, old: PrefixMirror): void {
    const start = old.startsWith ?? '';
    this.opts.logger.info({ network: nid, part: `${start}…`, endpoints: old.view.size }, 'many endpoints in one watch: watching them in 16 parts');
    // until the switch the view follows the old watch; the new ones' events are only kept in their views
    const next = HEX_DIGITS.map((digit) => this.mirror(nid, start + digit, (events, resync, self) => this.fromWatch(nid, w, self, events, resync)));
    w.splitting.set(old, next);
    void Promise.all(next.map((m) => m.synced)).then(() => this.switchTo(nid, w, old, next));
  }

  /** The new watches have all listed: the view gets the difference between the old watch's view and theirs. */
  private switchTo(nid: string, w: NetworkWatches, old: PrefixMirror, next: PrefixMirror[]): void {
    if (this.networks.get(nid) !== w || w.splitting.get(old) !== next) return;
    const had = new Map<string, KVEntry>(old.view);
    const events: WatchEvent[] = [];
    for (const m of next) {
      for (const [k, e] of m.view) {
        if (had.get(k)?.revision !== e.revision) events.push({ type: 'put', key: k, value: e.value, revision: e.revision });
        had.delete(k);
      }
    }
    for (const k of had.keys()) events.push({ type: 'delete', key: k, revision: '' });
    w.splitting.delete(old);
    w.current.delete(old);
    for (const m of next) w.current.add(m);
    this.retire([old]);
    if (events.length > 0) this.opts.onEvents(events, true);
  }

  private unwatchNetwork(nid: string): void {
    const w = this.networks.get(nid);
    if (!w) return;
    this.networks.delete(nid);
    // what the view follows has been applied (also before the network was ready): take all of it out
    const events: WatchEvent[] = [];
    for (const m of w.current) for (const k of m.view.keys()) events.push({ type: 'delete', key: k, revision: '' });
    this.retire(mirrorsOf(w));
    if (events.length > 0) this.opts.onEvents(events, true);
  }

  private retire(mirrors: readonly PrefixMirror[]): void {
    for (const m of mirrors) {
      const done = m.stop().then(() => {
        this.retiredResyncs += m.resyncs;
        this.stopping.delete(done);
      });
      this.stopping.add(done);
    }
  }
}

/** Every running watch of a network: those the view follows and those that will replace some of them. */
function mirrorsOf(w: NetworkWatches): PrefixMirror[] {
  return [...w.current, ...[...w.splitting.values()].flat()];
}

/** Whether mirror `m` (a network's single watch, or one of its parts) covers endpoint id `eid`. */
function covers(m: PrefixMirror, eid: string): boolean {
  return m.startsWith === undefined || eid.startsWith(m.startsWith);
}
