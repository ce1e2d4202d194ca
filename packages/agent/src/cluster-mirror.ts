/**
 * The agent's live copy of the cluster: {@link PrefixMirror}s (list, watch from the listing's
 * revision, re-list on any watch error) over `networks/`, `nodes/`, this node's `reaped/<node>/` and
 * the endpoints ({@link EndpointMirrors}: one over `endpoints/`, or on Consul per network and split
 * for large ones), the decoded {@link ClusterView} kept from their changes (one record decoded per
 * event; see {@link ClusterViewState}), and the store's health as the mirrors see it. A network's
 * record enters the view only once its endpoints have been listed. Where the endpoints are watched
 * per network, only the networks this node is on are followed after the first sync (a network not
 * followed is in the view without its endpoints; {@link follow}, {@link unfollowedNetworks},
 * {@link unfollowedOwners}).
 *
 * While the store is unreachable the mirrors keep their last view: nothing is torn down, and API
 * reads are served from it. When every mirror has listed again the store counts as reachable.
 *
 * The store's state ({@link StoreHealth}: reachable, unavailable since when, resyncing) comes from
 * three sources: the mirrors' watches, a read of this node's own record every
 * {@link STORE_PROBE_INTERVAL_MS} (a frozen server breaks no watch: only a call notices it; after an
 * outage only writes saw, a transaction that changes nothing), and the outcome of every call the
 * faces make through the guarded store (store-guard.ts).
 */

import type { Logger } from 'pino';
import { hasCode, PrefixMirror, sleep, StoreUnavailableError, storeErrorDetail, type KVEntry, type KVStore, type WatchEvent } from '@kvnet/store';
import { ClusterViewState, endpointsOfNode, type ClusterView, type ViewChange, type ViewPart } from './cluster-view.ts';
import { EndpointMirrors } from './endpoint-mirrors.ts';
import { AgentNotReadyError } from './errors.ts';
import { decodeRecord, ENDPOINTS, keys, lastSegment, NETWORKS, NODES, type EndpointRecord } from './layout.ts';

const NO_VIEW_CHANGE: ViewChange = { networks: new Set(), endpoints: new Map(), nodes: new Set() };

/** How often {@link ClusterMirror.waitForView} looks at the mirror. */
const VIEW_POLL_MS = 10;
/** How long a write waits for this agent's own view to show it before answering anyway. */
export const VIEW_CATCHUP_TIMEOUT_MS = 5_000;
/** Pause between two reads of this node's record that tell whether the store answers (each bounded by the store's own timeout). */
export const STORE_PROBE_INTERVAL_MS = 2_000;

/** What the agent knows about the store: `unavailable` from the first failure; `resyncing` while it answers but the mirrors have not listed again. */
export type StoreState = 'reachable' | 'unavailable' | 'resyncing';

/** The store's state as `/v1/status`, `/readyz` and `kvnet doctor` show it. */
export interface StoreHealthReport {
  readonly state: StoreState;
  /** When the store entered this state (ISO 8601). */
  readonly since: string;
  /** The failure that made it unavailable, without the "cluster store … is unavailable:" prefix. */
  readonly lastError?: string;
  /** Round trip of the last successful probe read, in milliseconds. */
  readonly latencyMs?: number;
  /** When the last probe read answered (ISO 8601). */
  readonly lastAnsweredAt?: string;
  /** A call failed to reach the store with this error and the probe is checking whether it is down. */
  readonly suspect?: string;
}

/**
 * Where a failure was observed: a mirror's watch or listing, the probe's read, a call through the
 * guarded store, or the probe's transaction that tests the write path.
 */
export type StoreSignal = 'mirror' | 'probe' | 'call' | 'write-probe';

/**
 * The store's state, from every signal the agent has. Pure bookkeeping (the clock is passed in):
 * - a failure of the agent's own machinery (a mirror, the probe's read or its write transaction)
 *   makes it `unavailable` (the time is kept from the first one); while unavailable every call
 *   through the guarded store is refused at once ({@link admits});
 * - a failed call alone is not an outage: on a loaded store one request can miss its timeout while
 *   the next answers, and refusing every call after it turned a slow store into a refusing one (a
 *   burst of 200 connects on 100 hosts). It makes the store {@link suspect}: calls still go through,
 *   and the probe runs at once, testing the write path; if that fails too, it is an outage;
 * - an outage seen by reads (a probe read or a mirror failed) ends when a read answers again;
 * - an outage seen only by the write path (a write that timed out while reads work: the embedded
 *   store's file locked by another process) ends only when the write path answers: meanwhile the
 *   probe ({@link needsWriteProbe}) runs a transaction that changes nothing instead of a plain read;
 * - after an outage it is `resyncing` until every mirror has listed again, then `reachable`.
 */
export class StoreHealth {
  private state: StoreState = 'reachable';
  private since: number;
  private lastError: string | undefined;
  private latencyMs: number | undefined;
  private lastAnsweredAt: number | undefined;
  private mirrorsOk = true;
  private failedOnCall = false;
  private suspicion: string | undefined;
  private readonly listeners = new Set<(from: StoreState, to: StoreState) => void>();
  private readonly suspectListeners = new Set<(error: string) => void>();

  /** `url` (without credentials) goes into {@link unavailableError}; `now` is the clock. */
  constructor(
    private readonly url: string,
    private readonly now: () => number = Date.now,
  ) {
    this.since = now();
  }

  /** `listener` hears every change of {@link StoreState}; returns its removal. */
  subscribe(listener: (from: StoreState, to: StoreState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** `listener` hears the call failure that made the store {@link suspect} (not the ones after it); returns its removal. */
  onSuspect(listener: (error: string) => void): () => void {
    this.suspectListeners.add(listener);
    return () => this.suspectListeners.delete(listener);
  }

  get current(): StoreState {
    return this.state;
  }

  /** A call failed to reach the store and the probe has not yet said whether the store is down (the call's error). */
  get suspect(): string | undefined {
    return this.suspicion;
  }

  /** A call failed (the store is suspect), or the outage was seen by the write path only: the probe must test the write path. */
  get needsWriteProbe(): boolean {
    return this.suspicion !== undefined || (this.state === 'unavailable' && this.failedOnCall);
  }

  report(): StoreHealthReport {
    return {
      state: this.state,
      since: new Date(this.since).toISOString(),
      ...(this.state !== 'reachable' && this.lastError !== undefined ? { lastError: this.lastError } : {}),
      ...(this.latencyMs !== undefined ? { latencyMs: this.latencyMs } : {}),
      ...(this.lastAnsweredAt !== undefined ? { lastAnsweredAt: new Date(this.lastAnsweredAt).toISOString() } : {}),
      ...(this.suspicion !== undefined ? { suspect: this.suspicion } : {}),
    };
  }

  /**
   * A failure to reach the store, seen by `source`. A `call` while the store is not already
   * unavailable only makes it {@link suspect} (and wakes the probe); every other source is an outage.
   */
  failure(source: StoreSignal, err: unknown): void {
    const message = storeErrorDetail(err);
    if (source === 'call' && this.state !== 'unavailable') {
      const first = this.suspicion === undefined;
      this.suspicion = message;
      if (first) for (const l of this.suspectListeners) l(message);
      return;
    }
    this.lastError = message;
    if (source === 'write-probe') {
      if (this.state !== 'unavailable') this.failedOnCall = true;
    } else if (source !== 'call') {
      this.failedOnCall = false;
    }
    this.suspicion = undefined;
    this.set('unavailable');
  }

  /** A probe read answered after `latencyMs`. */
  probeOk(latencyMs: number): void {
    this.latencyMs = Math.round(latencyMs * 10) / 10;
    this.lastAnsweredAt = this.now();
    if (this.state === 'unavailable' && !this.failedOnCall) this.recovered();
  }

  /** A call (or the write probe) answered: successfully, or with an answer that is not about reachability. */
  callOk(): void {
    this.suspicion = undefined;
    if (this.state === 'unavailable') this.recovered();
  }

  /** Whether every mirror currently has the store (false from a watch error until it has listed again). */
  mirrors(ok: boolean): void {
    this.mirrorsOk = ok;
    if (!ok) return;
    if (this.state === 'resyncing') this.set('reachable');
    else if (this.state === 'unavailable' && !this.failedOnCall) this.recovered();
  }

  /** Whether a call may go to the store now; false while unavailable (refuse it with {@link unavailableError}). */
  admits(): boolean {
    return this.state !== 'unavailable';
  }

  /** The error every refused call gets: the store's own kind, saying since when and why. */
  unavailableError(): StoreUnavailableError {
    const secs = Math.max(0, Math.round((this.now() - this.since) / 1000));
    return new StoreUnavailableError(this.url, `unreachable since ${new Date(this.since).toISOString()} (${secs} s)${this.lastError ? `; last error: ${this.lastError}` : ''}`);
  }

  private recovered(): void {
    this.failedOnCall = false;
    this.set(this.mirrorsOk ? 'reachable' : 'resyncing');
  }

  private set(next: StoreState): void {
    if (next === this.state) return;
    const prev = this.state;
    this.state = next;
    this.since = this.now();
    for (const l of this.listeners) l(prev, next);
  }
}

export interface ClusterMirrorOptions {
  readonly store: KVStore;
  readonly logger: Logger;
  /** This node's name (its `reaped/<node>/` tombstones are mirrored). */
  readonly node: string;
  /**
   * Any change of any mirror, with what it changed in the view (empty for this node's tombstones);
   * `resync` when the change comes from a re-list rather than the watch.
   */
  readonly onChange: (change: ViewChange, resync: boolean) => void;
  /** A mirror lost the store; `first` is true for the first report of an outage. */
  readonly onStoreError: (prefix: string, err: unknown, first: boolean) => void;
  /** The store is reachable again after an outage (it answers and every mirror has listed again). */
  readonly onStoreBack: () => void;
  /** The store's state, when the caller made it before the mirror (to guard the store it hands out); default a new one. */
  readonly health?: StoreHealth;
  /** Watch endpoints per network, splitting large ones (default: when the store's watch answers carry the whole range, i.e. Consul); see endpoint-mirrors.ts. */
  readonly endpointsPerNetwork?: boolean;
  /** Records of one network's watch beyond which it is split in 16 (tests); default SPLIT_AT. */
  readonly endpointsSplitAt?: number;
  /** With per-network watches, follow only the networks this node is on (default true); see endpoint-mirrors.ts. */
  readonly followMembersOnly?: boolean;
  /** How long after this node's last endpoint on a network it is let go (tests); default UNFOLLOW_AFTER_MS. */
  readonly unfollowAfterMs?: number;
}

export class ClusterMirror {
  private readonly networks: PrefixMirror;
  private readonly endpoints: EndpointMirrors;
  private readonly nodes: PrefixMirror;
  private readonly reapedMirror: PrefixMirror;
  /** Every mirror but the endpoints'. */
  private readonly all: readonly PrefixMirror[];
  /** Network records (keys) not yet in the view: their endpoints have not all been listed. */
  private readonly held = new Set<string>();
  private readonly state: ClusterViewState;
  private syncedAll = false;
  private stopped = false;
  /** The store's state (reachable / unavailable since when / resyncing); the guarded store reports calls to it. */
  readonly health: StoreHealth;
  private readonly probeStop = new AbortController();
  private probeLoop: Promise<void> | undefined;
  /** Networks not followed → the nodes that owned endpoints there when they were let go (for the reaper). */
  private readonly ownersWhenLetGo = new Map<string, Set<string>>();

  constructor(private readonly opts: ClusterMirrorOptions) {
    this.state = new ClusterViewState((key, err) => opts.logger.warn({ key, err }, 'skipping unreadable store record'));
    this.health = opts.health ?? new StoreHealth(opts.store.url);
    this.health.subscribe((from, to) => {
      if (to === 'reachable' && from !== 'reachable') opts.onStoreBack();
    });
    const mirror = (prefix: string, part: ViewPart | undefined, onChange?: (events: readonly WatchEvent[], resync: boolean) => void): PrefixMirror =>
      new PrefixMirror(opts.store, prefix, {
        logger: opts.logger.child({ component: 'mirror', prefix }),
        onChange: onChange ? (change) => onChange(change.events, change.resync) : (change) => opts.onChange(part ? this.state.apply(part, change.events) : NO_VIEW_CHANGE, change.resync),
        onHealth: (ok, err) => this.onHealth(prefix, ok, err),
      });
    this.networks = mirror(NETWORKS, 'networks', (events, resync) => this.networksChanged(events, resync));
    this.nodes = mirror(NODES, 'nodes');
    this.reapedMirror = mirror(keys.reapedOf(opts.node), undefined, (events, resync) => {
      opts.onChange(NO_VIEW_CHANGE, resync);
      this.tombstonesChanged();
    });
    this.all = [this.networks, this.nodes, this.reapedMirror];
    this.endpoints = new EndpointMirrors({
      store: opts.store,
      logger: opts.logger,
      onEvents: (events, resync) => {
        const change = this.state.apply('endpoints', events);
        opts.onChange(change, resync);
        this.endpoints.review(change.endpoints.keys());
      },
      onReady: (nid) => this.release(nid),
      ...(opts.followMembersOnly === false ? {} : { isMember: (nid: string) => this.isMember(nid) }),
      ...(opts.unfollowAfterMs === undefined ? {} : { unfollowAfterMs: opts.unfollowAfterMs }),
      onUnfollow: (nid) => this.ownersWhenLetGo.set(nid, new Set([...(this.state.snapshot().endpoints.get(nid)?.values() ?? [])].map((e) => e.node))),
      onHealth: (prefix, ok, err) => this.onHealth(prefix, ok, err),
      ...(opts.endpointsPerNetwork === undefined ? {} : { perNetwork: opts.endpointsPerNetwork }),
      ...(opts.endpointsSplitAt === undefined ? {} : { splitAt: opts.endpointsSplitAt }),
      // the networks', nodes' and reaped records' watches come out of the store's limit too
      ...(opts.store.capabilities.maxWatches === undefined ? {} : { maxWatches: opts.store.capabilities.maxWatches - this.all.length }),
    });
  }

  start(): void {
    for (const m of this.all) m.start();
    this.endpoints.start();
    this.probeLoop = this.probe();
  }

  /**
   * A new network's record waits until its endpoints have been listed ({@link release}); a removed
   * network leaves the view before its endpoints do. Then the endpoints' watches follow.
   */
  private networksChanged(events: readonly WatchEvent[], resync: boolean): void {
    const now: WatchEvent[] = [];
    for (const ev of events) {
      if (ev.type === 'put' && !this.endpoints.isReady(lastSegment(ev.key))) {
        this.held.add(ev.key);
        continue;
      }
      this.held.delete(ev.key);
      now.push(ev);
    }
    if (now.length > 0) this.opts.onChange(this.state.apply('networks', now), resync);
    this.endpoints.networksChanged(events);
    for (const ev of events) if (ev.type === 'delete' || this.endpoints.isFollowed(lastSegment(ev.key))) this.ownersWhenLetGo.delete(lastSegment(ev.key));
  }

  /** Whether this node is on network `nid`: it has an endpoint there, or a reaped one to restore. */
  private isMember(nid: string): boolean {
    if (endpointsOfNode(this.state.snapshot(), this.opts.node).some((e) => e.network === nid)) return true;
    return this.tombstoneNetworks().has(nid);
  }

  /** The networks of this node's tombstones (`reaped/<node>/<eid>` hold the reaped endpoint record). */
  private tombstoneNetworks(): Set<string> {
    const out = new Set<string>();
    for (const entry of this.reapedMirror.view.values()) {
      try {
        out.add(decodeRecord<EndpointRecord>(entry.value, entry.key).network);
      } catch {
        // an unreadable tombstone cannot be restored either
      }
    }
    return out;
  }

  /** This node was reaped from networks it may no longer follow: follow them again (the restore writes there). */
  private tombstonesChanged(): void {
    if (!this.endpoints.scoped) return;
    for (const nid of this.tombstoneNetworks()) {
      if (!this.endpoints.isFollowed(nid)) void this.endpoints.follow(nid).then((release) => release());
    }
    this.endpoints.review();
  }

  /**
   * This node is about to write an endpoint on network `nid` (or restore one): its endpoints are
   * followed from now until the returned function is called (see {@link EndpointMirrors.follow}).
   */
  async follow(nid: string): Promise<() => void> {
    const release = await this.endpoints.follow(nid);
    this.ownersWhenLetGo.delete(nid);
    return release;
  }

  /** Networks in the view whose endpoints are not (the view holds none of them: read the store). */
  unfollowedNetworks(): string[] {
    return this.endpoints.unfollowed();
  }

  /** Whether the view holds network `nid`'s endpoints. */
  isFollowed(nid: string): boolean {
    return this.endpoints.isFollowed(nid);
  }

  /**
   * The nodes that owned endpoints on networks not followed, as they were when each was let go (a
   * node may have connected there since: the reaper also watches for nodes that leave).
   */
  unfollowedOwners(): Set<string> {
    const out = new Set<string>();
    for (const nodes of this.ownersWhenLetGo.values()) for (const n of nodes) out.add(n);
    return out;
  }

  /** Node `node` has no endpoints left on the networks not followed (the reaper read them). */
  forgetOwner(node: string): void {
    for (const nodes of this.ownersWhenLetGo.values()) nodes.delete(node);
  }

  /** Network `nid`'s endpoints have been listed: its record (as the mirror has it now) enters the view. */
  private release(nid: string): void {
    const key = keys.network(nid);
    if (!this.held.delete(key)) return;
    const entry = this.networks.view.get(key);
    if (!entry) return;
    this.opts.onChange(this.state.apply('networks', [{ type: 'put', key, value: entry.value, revision: entry.revision }]), false);
  }

  /**
   * Reads this node's record every {@link STORE_PROBE_INTERVAL_MS}, and at once when a failed call
   * made the store suspect; each read is bounded by the store's timeout.
   */
  private async probe(): Promise<void> {
    const signal = this.probeStop.signal;
    let wake = new AbortController();
    const unsubscribe = this.health.onSuspect(() => wake.abort());
    try {
      while (!signal.aborted) {
        // a call that failed while this slept (or while the last probe ran) wakes it
        if (!wake.signal.aborted) await sleep(STORE_PROBE_INTERVAL_MS, AbortSignal.any([signal, wake.signal])).catch(() => undefined);
        if (wake.signal.aborted) wake = new AbortController();
        if (signal.aborted) return;
        await this.probeOnce(signal);
      }
    } finally {
      unsubscribe();
    }
  }

  private async probeOnce(signal: AbortSignal): Promise<void> {
    const t0 = performance.now();
    const writePath = this.health.needsWriteProbe;
    let writing = false;
    try {
      const key = keys.node(this.opts.node);
      const rec = await this.opts.store.get(key, { signal });
      this.health.probeOk(performance.now() - t0);
      if (writePath) {
        // A transaction that changes nothing goes the way writes go (the embedded store: its write lock).
        writing = true;
        await this.opts.store.txn([{ op: 'check', key, if: rec ? { revision: rec.revision } : { absent: true } }], { signal });
        this.health.callOk();
      }
    } catch (err) {
      if (signal.aborted) return;
      if (hasCode(err, 'KVNET_STORE_UNAVAILABLE')) {
        const first = this.health.current !== 'unavailable';
        this.health.failure(writing ? 'write-probe' : 'probe', err);
        this.opts.onStoreError('probe', err, first);
      } else if (writePath) {
        // an answer that is not about reachability (a refused check) still says the write path works
        this.health.callOk();
      }
    }
  }

  /** Resolves once every mirror has listed; rejects with AgentNotReadyError after `timeoutMs`. */
  async synced(timeoutMs: number): Promise<void> {
    const timer = new AbortController();
    const timeout = sleep(timeoutMs, timer.signal).then(() => {
      throw new AgentNotReadyError(`could not list the cluster store ${this.opts.store.url} within ${timeoutMs / 1000}s`);
    });
    try {
      // the endpoints' watches are known once the networks have listed
      await Promise.race([Promise.all(this.all.map((m) => m.synced)).then(() => this.endpoints.synced()), timeout]);
      this.syncedAll = true;
      // every network has listed: this node's own endpoints are known, the others can be let go
      this.endpoints.startScoping();
    } finally {
      timer.abort();
      timeout.catch(() => undefined);
    }
  }

  /**
   * Every mirror has listed at least once. Before that the view is partial (networks without their
   * endpoints, say) and must never be applied: it would tear down what the missing part describes.
   */
  get isSynced(): boolean {
    return this.syncedAll;
  }

  /** The store is reachable and every mirror has listed (false from the first failure until then). */
  get storeHealthy(): boolean {
    return this.health.current === 'reachable';
  }

  /** Watches held on the store now (the endpoints' included; during a split, both the old and the new). */
  get watches(): number {
    return this.all.length + this.endpoints.watches;
  }

  /** Re-lists of all mirrors since start. */
  get resyncs(): number {
    return this.all.reduce((s, m) => s + m.resyncs, this.endpoints.resyncs);
  }

  /** This node's reaped endpoints (`reaped/<node>/<eid>` entries). */
  reaped(): KVEntry[] {
    return [...this.reapedMirror.view.values()];
  }

  /**
   * The decoded view: a snapshot that never changes, the same object until a mirror moves; what a
   * change did not touch is shared with the previous snapshot.
   */
  view(): ClusterView {
    return this.state.snapshot();
  }

  /** Resolves true when this agent's view shows `key` present (or absent), false after `timeoutMs`; never rejects. */
  async waitForView(key: string, present: boolean, timeoutMs = VIEW_CATCHUP_TIMEOUT_MS): Promise<boolean> {
    const has = this.holderOf(key);
    if (!has) return false;
    const deadline = Date.now() + timeoutMs;
    while (has() !== present) {
      if (Date.now() > deadline || this.stopped) return false;
      await sleep(VIEW_POLL_MS);
    }
    return true;
  }

  /** How to tell whether the view holds `key` (a network only once it is out of {@link held}); undefined for keys no mirror covers. */
  private holderOf(key: string): (() => boolean) | undefined {
    if (key.startsWith(`${ENDPOINTS}/`)) return () => this.endpoints.has(key);
    if (key.startsWith(`${NETWORKS}/`)) return () => this.networks.view.has(key) && !this.held.has(key);
    const mirror = this.all.find((x) => key.startsWith(`${x.prefix}/`));
    return mirror ? () => mirror.view.has(key) : undefined;
  }

  /** How many watches cover network `nid`'s endpoints (1, or 16 once split; 0 while not watched). */
  endpointWatches(nid: string): number {
    return this.endpoints.watchCount(nid);
  }

  /** Resolves when `test` holds for the view, or after `timeoutMs`; never rejects. */
  async waitUntil(test: (view: ClusterView) => boolean, timeoutMs = VIEW_CATCHUP_TIMEOUT_MS): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!test(this.view())) {
      if (Date.now() > deadline || this.stopped) return false;
      await sleep(VIEW_POLL_MS);
    }
    return true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.probeStop.abort();
    await Promise.all([...this.all.map((m) => m.stop()), this.endpoints.stop(), this.probeLoop]);
  }

  private onHealth(prefix: string, ok: boolean, err: unknown): void {
    if (!ok) {
      const first = this.health.current !== 'unavailable';
      this.health.mirrors(false);
      this.health.failure('mirror', err);
      this.opts.onStoreError(prefix, err, first);
    } else if (this.all.every((m) => m.healthy) && this.endpoints.healthy) {
      this.health.mirrors(true);
    }
  }
}
