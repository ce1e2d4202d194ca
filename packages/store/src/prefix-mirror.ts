/**
 * A local copy of everything below one prefix, kept current by the list-then-watch loop: list, watch
 * from the listing's revision, and on any watch error (reset, outage) list again with backoff and
 * report the difference as changes. Consumers never depend on having seen every event: after a
 * resync they receive exactly the puts and deletes that turn their previous view into the new one.
 */

import type { Logger } from 'pino';
import { backoffDelay, sleep } from './deadline.ts';
import { hasCode } from './errors.ts';
import { validateStartsWith } from './keys.ts';
import type { KVEntry, KVStore, ListOptions, Revision, WatchEvent } from './store.ts';

export const MIRROR_RETRY_BASE_MS = 100;
export const MIRROR_RETRY_CAP_MS = 5_000;

export interface MirrorChange {
  /** The changes since the previous callback, in store order. */
  readonly events: readonly WatchEvent[];
  /** True when the changes come from a listing (the first one or a re-list) rather than the watch. */
  readonly resync: boolean;
}

export interface PrefixMirrorOptions {
  readonly logger?: Logger;
  /**
   * Mirror only the keys whose path below the prefix starts with this (see
   * {@link ListOptions.startsWith}); passed to both the listing and the watch.
   */
  readonly startsWith?: string;
  /** Called after each applied change; errors thrown here are logged and do not stop the mirror. */
  readonly onChange?: (change: MirrorChange, mirror: PrefixMirror) => void;
  /** Called when the mirror loses the store (unhealthy) and when it is back (healthy). */
  readonly onHealth?: (healthy: boolean, error?: unknown) => void;
}

export class PrefixMirror {
  private readonly entries = new Map<string, KVEntry>();
  private controller: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private syncedResolve!: () => void;
  private revisionValue: Revision | undefined;
  private healthyValue = false;
  private resyncCount = 0;

  /** Resolves after the first successful listing. */
  readonly synced: Promise<void>;
  /** The range this mirror covers below {@link prefix}: the keys starting with this; undefined for all. */
  readonly startsWith: string | undefined;

  /** @throws InvalidKeyError when `options.startsWith` is not a valid range (see {@link ListOptions.startsWith}). */
  constructor(
    readonly store: KVStore,
    readonly prefix: string,
    private readonly options: PrefixMirrorOptions = {},
  ) {
    validateStartsWith(options.startsWith);
    this.startsWith = options.startsWith;
    this.synced = new Promise((resolve) => (this.syncedResolve = resolve));
  }

  /** The current view (do not mutate). */
  get view(): ReadonlyMap<string, KVEntry> {
    return this.entries;
  }

  get revision(): Revision | undefined {
    return this.revisionValue;
  }

  /** False while the mirror cannot reach the store; the view is then possibly stale. */
  get healthy(): boolean {
    return this.healthyValue;
  }

  /** How many times the mirror had to list again after the first listing. */
  get resyncs(): number {
    return this.resyncCount;
  }

  start(): void {
    if (this.loop) return;
    this.controller = new AbortController();
    this.loop = this.run(this.controller.signal);
  }

  async stop(): Promise<void> {
    this.controller?.abort();
    await this.loop;
    this.loop = undefined;
  }

  private setHealth(healthy: boolean, error?: unknown): void {
    if (this.healthyValue === healthy) return;
    this.healthyValue = healthy;
    try {
      this.options.onHealth?.(healthy, error);
    } catch (err) {
      this.options.logger?.error({ err }, 'mirror health callback failed');
    }
  }

  private emit(change: MirrorChange): void {
    if (change.events.length === 0) return;
    try {
      this.options.onChange?.(change, this);
    } catch (err) {
      this.options.logger?.error({ err, prefix: this.prefix, startsWith: this.startsWith }, 'mirror change callback failed');
    }
  }

  private async run(signal: AbortSignal): Promise<void> {
    let attempt = 0;
    let first = true;
    while (!signal.aborted) {
      try {
        const range = this.startsWith === undefined ? {} : { startsWith: this.startsWith };
        const listing = await this.store.list(this.prefix, { signal, ...range });
        this.applyListing(listing.entries);
        this.revisionValue = listing.revision;
        if (first) this.syncedResolve();
        else this.resyncCount++;
        first = false;
        attempt = 0;
        this.setHealth(true);
        for await (const batch of this.store.watch(this.prefix, listing.revision, { signal, ...range })) {
          for (const ev of batch.events) {
            if (ev.type === 'put') this.entries.set(ev.key, { key: ev.key, value: ev.value, revision: ev.revision });
            else this.entries.delete(ev.key);
          }
          this.revisionValue = batch.revision;
          this.emit({ events: batch.events, resync: false });
        }
      } catch (err) {
        if (signal.aborted) break;
        const reset = hasCode(err, 'KVNET_STORE_WATCH_RESET');
        if (!reset) this.setHealth(false, err);
        this.options.logger?.warn({ err, prefix: this.prefix, startsWith: this.startsWith, attempt }, reset ? 'watch reset, listing again' : 'store error, retrying');
        try {
          await sleep(reset && attempt === 0 ? 0 : backoffDelay(attempt, MIRROR_RETRY_BASE_MS, MIRROR_RETRY_CAP_MS) + 50, signal);
        } catch {
          break;
        }
        attempt++;
      }
    }
  }

  private applyListing(listed: readonly KVEntry[]): void {
    const events: WatchEvent[] = [];
    const seen = new Set<string>();
    for (const entry of listed) {
      seen.add(entry.key);
      const before = this.entries.get(entry.key);
      if (!before || before.revision !== entry.revision) {
        this.entries.set(entry.key, entry);
        events.push({ type: 'put', key: entry.key, value: entry.value, revision: entry.revision });
      }
    }
    for (const key of [...this.entries.keys()]) {
      if (!seen.has(key)) {
        this.entries.delete(key);
        events.push({ type: 'delete', key, revision: '' });
      }
    }
    this.emit({ events, resync: true });
  }
}
