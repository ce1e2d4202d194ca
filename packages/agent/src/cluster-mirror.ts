/**
 * The agent's live copy of the cluster: four {@link PrefixMirror}s (list, watch from the listing's
 * revision, re-list on any watch error) over `networks/`, `endpoints/`, `nodes/` and this node's
 * `reaped/<node>/`, the decoded {@link ClusterView} kept from their changes (one record decoded per
 * event; see {@link ClusterViewState}), and the store's health as the mirrors see it.
 *
 * While the store is unreachable the mirrors keep their last view: nothing is torn down, and API
 * reads are served from it. When every mirror has listed again the store counts as reachable.
 */

import type { Logger } from 'pino';
import { PrefixMirror, sleep, type KVEntry, type KVStore } from '@kvnet/store';
import { ClusterViewState, type ClusterView, type ViewChange, type ViewPart } from './cluster-view.ts';
import { AgentNotReadyError } from './errors.ts';
import { ENDPOINTS, keys, NETWORKS, NODES } from './layout.ts';

const NO_VIEW_CHANGE: ViewChange = { networks: new Set(), endpoints: new Map(), nodes: new Set() };

/** How often {@link ClusterMirror.waitForView} looks at the mirror. */
const VIEW_POLL_MS = 10;
/** How long a write waits for this agent's own view to show it before answering anyway. */
export const VIEW_CATCHUP_TIMEOUT_MS = 5_000;

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
  /** Every mirror reaches the store again after an outage. */
  readonly onStoreBack: () => void;
}

export class ClusterMirror {
  private readonly networks: PrefixMirror;
  private readonly endpoints: PrefixMirror;
  private readonly nodes: PrefixMirror;
  private readonly reapedMirror: PrefixMirror;
  private readonly all: readonly PrefixMirror[];
  private readonly state: ClusterViewState;
  private syncedAll = false;
  private healthy = true;
  private stopped = false;

  constructor(private readonly opts: ClusterMirrorOptions) {
    this.state = new ClusterViewState((key, err) => opts.logger.warn({ key, err }, 'skipping unreadable store record'));
    const mirror = (prefix: string, part: ViewPart | undefined): PrefixMirror =>
      new PrefixMirror(opts.store, prefix, {
        logger: opts.logger.child({ component: 'mirror', prefix }),
        onChange: (change) => opts.onChange(part ? this.state.apply(part, change.events) : NO_VIEW_CHANGE, change.resync),
        onHealth: (ok, err) => this.onHealth(prefix, ok, err),
      });
    this.networks = mirror(NETWORKS, 'networks');
    this.endpoints = mirror(ENDPOINTS, 'endpoints');
    this.nodes = mirror(NODES, 'nodes');
    this.reapedMirror = mirror(keys.reapedOf(opts.node), undefined);
    this.all = [this.networks, this.endpoints, this.nodes, this.reapedMirror];
  }

  start(): void {
    for (const m of this.all) m.start();
  }

  /** Resolves once every mirror has listed; rejects with AgentNotReadyError after `timeoutMs`. */
  async synced(timeoutMs: number): Promise<void> {
    const timer = new AbortController();
    const timeout = sleep(timeoutMs, timer.signal).then(() => {
      throw new AgentNotReadyError(`could not list the cluster store ${this.opts.store.url} within ${timeoutMs / 1000}s`);
    });
    try {
      await Promise.race([Promise.all(this.all.map((m) => m.synced)), timeout]);
      this.syncedAll = true;
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

  /** The store answers every mirror (false from the first failure until all have listed again). */
  get storeHealthy(): boolean {
    return this.healthy;
  }

  /** Re-lists of all mirrors since start. */
  get resyncs(): number {
    return this.all.reduce((s, m) => s + m.resyncs, 0);
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
    const mirror = this.all.find((x) => key.startsWith(`${x.prefix}/`));
    if (!mirror) return false;
    const deadline = Date.now() + timeoutMs;
    while (mirror.view.has(key) !== present) {
      if (Date.now() > deadline || this.stopped) return false;
      await sleep(VIEW_POLL_MS);
    }
    return true;
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
    await Promise.all(this.all.map((m) => m.stop()));
  }

  private onHealth(prefix: string, ok: boolean, err: unknown): void {
    if (!ok) {
      const first = this.healthy;
      this.healthy = false;
      this.opts.onStoreError(prefix, err, first);
    } else if (!this.healthy && this.all.every((m) => m.healthy)) {
      this.healthy = true;
      this.opts.onStoreBack();
    }
  }
}
