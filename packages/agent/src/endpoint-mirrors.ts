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
 *
 * **Only the networks this host is on** ({@link EndpointMirrorsOptions.isMember}; per-network mode
 * only). A host programs and names nothing of a network it has no endpoint on, so on such a store it
 * does not watch that network's endpoints: its churn costs the host nothing, and Consul one blocking
 * query less per host that is not on it. At start every network is watched (that is how the agent
 * finds its own endpoints and the nodes that own any); once all have listed ({@link startScoping})
 * those without a member are let go: their records stay in the view, their endpoints leave it. A
 * network is followed again before this host writes an endpoint there ({@link follow}: the connect
 * path, Docker's CreateEndpoint, the restore of reaped endpoints), and let go
 * {@link UNFOLLOW_AFTER_MS} after its last local endpoint went (a container that is restarted keeps
 * its peers). What else read the endpoints of every network reads the store for the networks not
 * followed: the reaper (a dead node's endpoints), the janitor, `network ls`/`inspect`.
 */

import type { Logger } from 'pino';
import { PrefixMirror, sleep, type KVEntry, type KVStore, type WatchEvent } from '@kvnet/store';
import { ENDPOINTS, keys, lastSegment, parseEndpointKey } from './layout.ts';

/** A watch of a network's endpoints is replaced by 16 when it holds more records than this (Consul). */
export const SPLIT_AT = 256;
/** How many leading hex digits of the endpoint id the finest watch covers (16^3 = 4 096 watches at most per network). */
export const MAX_SPLIT_DIGITS = 3;
/** How long a network stays followed after this host's last endpoint on it went. */
export const UNFOLLOW_AFTER_MS = 30_000;
/** How long {@link EndpointMirrors.follow} waits for a network's first listing before it lets the caller go on (the watch still delivers). */
export const FOLLOW_WAIT_MS = 5_000;
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
  /**
   * Whether this host is on network `nid` (has an endpoint there, or one reaped from it to restore).
   * Given (and watching per network), only such networks are followed once {@link EndpointMirrors.startScoping}
   * ran; default: every network.
   */
  readonly isMember?: (nid: string) => boolean;
  /** How long after its last local endpoint a network is let go; default {@link UNFOLLOW_AFTER_MS}. */
  readonly unfollowAfterMs?: number;
  /** Network `nid` is being let go: called just before its endpoints leave the view. */
  readonly onUnfollow?: (nid: string) => void;
}

/**
 * The watches of one network: those the view follows, and, for each one being split, the 16 that will
 * replace it. A network not followed has none, and counts as ready (its record is in the view).
 */
interface NetworkWatches {
  readonly current: Set<PrefixMirror>;
  readonly splitting: Map<PrefixMirror, PrefixMirror[]>;
  readonly followed: boolean;
  ready: boolean;
  /** Resolves when {@link ready} becomes true. */
  readonly listed: Promise<void>;
  markListed(): void;
  /** Callers of {@link EndpointMirrors.follow} that have not let go yet. */
  pins: number;
  unfollowTimer?: NodeJS.Timeout | undefined;
}

function networkWatches(followed: boolean): NetworkWatches {
  let markListed!: () => void;
  const listed = new Promise<void>((resolve) => (markListed = resolve));
  const w: NetworkWatches = { current: new Set(), splitting: new Map(), followed, ready: !followed, listed, markListed, pins: 0 };
  if (!followed) markListed();
  return w;
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
  /** {@link startScoping} ran: networks without a member are let go, new ones not followed. */
  private scoping = false;
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

  /** Whether only the networks this host is on are followed (per network, with {@link EndpointMirrorsOptions.isMember}). */
  get scoped(): boolean {
    return this.whole === undefined && this.opts.isMember !== undefined;
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
      if (ev.type === 'put' && !this.networks.has(nid)) {
        if (this.scoping && !this.opts.isMember!(nid)) {
          // not followed: nothing to list, its record may enter the view now
          this.networks.set(nid, networkWatches(false));
          this.opts.onReady(nid);
        } else this.watchNetwork(nid);
      } else if (ev.type === 'delete') this.unwatchNetwork(nid);
    }
  }

  /**
   * Every network has listed (the agent's first sync): from now on only the networks this host is on
   * are followed. Those without a member are let go at once. Does nothing unless {@link scoped}.
   */
  startScoping(): void {
    if (!this.scoped || this.scoping || this.stopped) return;
    this.scoping = true;
    for (const [nid, w] of [...this.networks]) {
      if (w.followed && w.ready && w.pins === 0 && !this.opts.isMember!(nid)) this.unfollow(nid, w);
    }
  }

  /**
   * This host is about to write an endpoint on network `nid`: follow it (if it is not followed yet, its
   * watches start) and keep it followed until the returned function is called. Resolves once the
   * network's endpoints have listed, so the new endpoint's peers are known when it is plumbed — or
   * after {@link FOLLOW_WAIT_MS} if the store is slow (the watch still delivers them later).
   */
  async follow(nid: string): Promise<() => void> {
    if (!this.scoped || this.stopped) return () => undefined;
    let w = this.networks.get(nid);
    if (!w?.followed) {
      w = this.watchNetwork(nid);
      this.opts.logger.info({ network: nid }, 'this host is joining the network: watching its endpoints');
    }
    const held = w;
    held.pins++;
    clearTimeout(held.unfollowTimer);
    held.unfollowTimer = undefined;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      held.pins--;
      this.review([nid]);
    };
    const timer = new AbortController();
    await Promise.race([held.listed, sleep(FOLLOW_WAIT_MS, timer.signal).catch(() => undefined)]);
    timer.abort();
    return release;
  }

  /**
   * Looks again at networks `nids` (default: all) after this host's endpoints or tombstones on them
   * changed: one no longer holding a member is let go after {@link UNFOLLOW_AFTER_MS} (if it is still
   * without one then); one that has a member again keeps following.
   */
  review(nids?: Iterable<string>): void {
    if (!this.scoping || this.stopped) return;
    for (const nid of nids ?? [...this.networks.keys()]) {
      const w = this.networks.get(nid);
      if (!w?.followed || !w.ready || w.pins > 0) continue;
      if (this.opts.isMember!(nid)) {
        clearTimeout(w.unfollowTimer);
        w.unfollowTimer = undefined;
        continue;
      }
      if (w.unfollowTimer) continue;
      w.unfollowTimer = setTimeout(() => {
        w.unfollowTimer = undefined;
        if (this.networks.get(nid) === w && w.pins === 0 && !this.stopped && !this.opts.isMember!(nid)) this.unfollow(nid, w);
      }, this.opts.unfollowAfterMs ?? UNFOLLOW_AFTER_MS);
      w.unfollowTimer.unref();
    }
  }

  /** Whether network `nid`'s endpoints are watched (always, unless {@link scoped}). */
  isFollowed(nid: string): boolean {
    if (!this.scoped) return true;
    return this.networks.get(nid)?.followed ?? false;
  }

  /** The networks known but not followed (their endpoints are not in the view). */
  unfollowed(): string[] {
    const out: string[] = [];
    for (const [nid, w] of this.networks) if (!w.followed) out.push(nid);
    return out;
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
    for (const w of this.networks.values()) clearTimeout(w.unfollowTimer);
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

  private watchNetwork(nid: string): NetworkWatches {
    const w = networkWatches(true);
    this.networks.set(nid, w);
    const m = this.mirror(nid, undefined, (events, resync, self) => this.fromWatch(nid, w, self, events, resync));
    w.current.add(m);
    void m.synced.then(() => this.listed(nid, w));
    return w;
  }

  /** Lets network `nid` go: its watches stop, its endpoints leave the view, its record stays. */
  private unfollow(nid: string, w: NetworkWatches): void {
    this.opts.onUnfollow?.(nid);
    clearTimeout(w.unfollowTimer);
    this.networks.set(nid, networkWatches(false));
    const events: WatchEvent[] = [];
    for (const m of w.current) for (const k of m.view.keys()) events.push({ type: 'delete', key: k, revision: '' });
    this.retire(mirrorsOf(w));
    this.opts.logger.info({ network: nid, endpoints: events.length }, 'no endpoint of this host on the network: no longer watching its endpoints');
    if (events.length > 0) this.opts.onEvents(events, true);
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
    w.markListed();
    this.opts.onReady(nid);
    this.review([nid]);
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
    clearTimeout(w.unfollowTimer);
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
