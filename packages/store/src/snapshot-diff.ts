/**
 * Watches for backends that report state rather than history (Consul blocking queries, ZooKeeper
 * watches): each read of a prefix is compared with the previous one and the difference becomes
 * events. Several writes to one key between two reads arrive as one put with the newest value.
 */

import type { Revision, WatchEvent } from './store.ts';

export interface SnapshotEntry {
  readonly value: Uint8Array;
  readonly revision: Revision;
  /** Position in the backend's global order (Consul ModifyIndex, ZooKeeper mzxid). */
  readonly order: bigint;
}

export type Snapshot = ReadonlyMap<string, SnapshotEntry>;

/**
 * The events that turn `prev` into `next`, in backend order: puts by their own order, deletes at
 * `deleteOrder` (the backend's index for the read that noticed them). Keys whose revision did not
 * change produce nothing, so spurious wake-ups are harmless.
 */
export function diffSnapshots(
  prev: Snapshot,
  next: Snapshot,
  deleteRevision: Revision,
  deleteOrder: bigint,
): WatchEvent[] {
  const changes: Array<{ order: bigint; event: WatchEvent }> = [];
  for (const [key, entry] of next) {
    const before = prev.get(key);
    if (!before || before.revision !== entry.revision) {
      changes.push({ order: entry.order, event: { type: 'put', key, value: entry.value, revision: entry.revision } });
    }
  }
  for (const key of prev.keys()) {
    if (!next.has(key)) changes.push({ order: deleteOrder, event: { type: 'delete', key, revision: deleteRevision } });
  }
  changes.sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : a.event.key < b.event.key ? -1 : 1));
  return changes.map((c) => c.event);
}

/**
 * Remembers the last few listings a store instance produced, so a watch started from a listing's
 * revision knows the exact state it starts from (these backends cannot replay history). Keyed by
 * the range (prefix and `startsWith`) and the revision: a watch never starts from the state of
 * another range that happens to share the revision.
 */
export class SnapshotCache {
  private readonly entries = new Map<string, Snapshot>();

  constructor(private readonly capacity = 32) {}

  remember(prefix: string, startsWith: string | undefined, revision: Revision, snapshot: Snapshot): void {
    const id = cacheId(prefix, startsWith, revision);
    this.entries.delete(id);
    this.entries.set(id, snapshot);
    while (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  recall(prefix: string, startsWith: string | undefined, revision: Revision): Snapshot | undefined {
    return this.entries.get(cacheId(prefix, startsWith, revision));
  }
}

function cacheId(prefix: string, startsWith: string | undefined, revision: Revision): string {
  return JSON.stringify([prefix, startsWith ?? null, revision]);
}
