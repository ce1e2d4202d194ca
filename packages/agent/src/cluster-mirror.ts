/**
 * The agent's live copy of the cluster: four {@link PrefixMirror}s (list, watch from the listing's
 * revision, re-list on any watch error) over `networks/`, `endpoints/`, `nodes/` and this node's
 * `reaped/<node>/`, the decoded {@link ClusterView} built from them (cached until a mirror moves), and
 * the store's health as the mirrors see it.
 *
 * While the store is unreachable the mirrors keep their last view: nothing is torn down, and API
 * reads are served from it. When every mirror has listed again the store counts as reachable.
 */

import type { Logger } from 'pino';
import { PrefixMirror, sleep, type KVEntry, type KVStore } from '@kvnet/store';
import { buildClusterView, type ClusterView } from './cluster-view.ts';
import { AgentNotReadyError } from './errors.ts';
import { ENDPOINTS, keys, NETWORKS, NODES } from './layout.ts';

/** How often {@link ClusterMirror.waitForView} looks at the mirror. */
const VIEW_POLL_MS = 10;
/** How long a write waits for this agent's own view to show it before answering anyway. */
export const VIEW_CATCHUP_TIMEOUT_MS = 5_000;

export interface ClusterMirrorOptions {
  readonly store: KVStore;
  readonly logger: Logger;
  /** This node's name (its `reaped/<node>/` tombstones are mirrored). */
  readonly node: string;
  /** Any change of any mirror, including a re-list. */
  readonly onChange: () => void;
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
  private cache: { stamp: string; view: ClusterView } | undefined;
  private syncedAll = false;
  private healthy = true;
  private stopped = false;

  constructor(private readonly opts: ClusterMirrorOptions) {
    const mirror = (prefix: string): PrefixMirror =>
      new PrefixMirror(opts.store, prefix, {
        logger: opts.logger.child({ component: 'mirror', prefix }),
        onChange: () => opts.onChange(),
        onHealth: (ok, err) => this.onHealth(prefix, ok, err),
      });
    this.networks = mirror(NETWORKS);
    this.endpoints = mirror(ENDPOINTS);
    this.nodes = mirror(NODES);
    this.reapedMirror = mirror(keys.reapedOf(opts.node));
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

  /** The decoded view; rebuilt only when a mirror moved (decoding every record per read would not scale). */
  view(): ClusterView {
    const parts = [this.networks, this.endpoints, this.nodes];
    const stamp = parts.map((x) => `${x.revision ?? ''}:${x.view.size}:${x.resyncs}`).join('|');
    if (this.cache?.stamp === stamp) return this.cache.view;
    const view = buildClusterView(
      { networks: this.networks.view.values(), endpoints: this.endpoints.view.values(), nodes: this.nodes.view.values() },
      (key, err) => this.opts.logger.warn({ key, err }, 'skipping unreadable store record'),
    );
    this.cache = { stamp, view };
    return view;
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
