/**
 * The agent's picture of the cluster, kept from the prefix mirrors' changes. Records that cannot be
 * decoded are skipped (and reported), never fatal: one bad key must not stop a host from programming
 * every other network.
 *
 * {@link ClusterViewState} applies each watch event to the view (one record decoded per event, not
 * the whole store) and hands out immutable snapshots that share everything a change did not touch:
 * the maps of a network whose endpoints did not change are the same objects in the next snapshot, so
 * a consumer tells "unchanged" by identity, and a change costs a copy of one bucket of the one
 * network's endpoint map it touched ({@link BucketMap}), not a decode of every record. It also says
 * what each batch of events changed ({@link ViewChange}), which lets the reconcile loop apply only that.
 */

import type { KVEntry, WatchEvent } from '@kvnet/store';
import {
  decodeRecord,
  ENDPOINTS,
  NETWORKS,
  NODES,
  parseEndpointKey,
  type EndpointRecord,
  type NetworkRecord,
  type NodeRecord,
} from './layout.ts';

export interface ClusterView {
  readonly networks: ReadonlyMap<string, NetworkRecord>;
  /** nid → eid → record (only for networks that have endpoint keys; the network record may be missing). */
  readonly endpoints: ReadonlyMap<string, ReadonlyMap<string, EndpointRecord>>;
  /** Live nodes by name. */
  readonly nodes: ReadonlyMap<string, NodeRecord>;
  /**
   * The same endpoints by owner node (`node` → `<nid>/<eid>` → record), so a host finds its own, and
   * the owners, without a pass over every endpoint. Views built by hand (tests) may leave it out: use
   * {@link endpointsOfNode} and {@link endpointOwners}, which fall back to a pass.
   */
  readonly byNode?: ReadonlyMap<string, ReadonlyMap<string, EndpointRecord>>;
}

export interface ViewSources {
  readonly networks: Iterable<KVEntry>;
  readonly endpoints: Iterable<KVEntry>;
  readonly nodes: Iterable<KVEntry>;
}

/** What one batch of store events changed in the view (records that appeared, changed or went). */
export interface ViewChange {
  /** Network ids. */
  readonly networks: ReadonlySet<string>;
  /** nid → eids. */
  readonly endpoints: ReadonlyMap<string, ReadonlySet<string>>;
  /** Node names. */
  readonly nodes: ReadonlySet<string>;
}

/** Which part of the view a mirror's prefix feeds. */
export type ViewPart = 'networks' | 'endpoints' | 'nodes';

export const VIEW_PARTS: Readonly<Record<ViewPart, string>> = { networks: NETWORKS, endpoints: ENDPOINTS, nodes: NODES };

type Decoded<T> = T | null;

/** Buckets of a {@link BucketMap}: a change after a snapshot copies one bucket (1/64 of the map). */
const BUCKETS = 64;

function bucketOf(key: string): number {
  // keys end in an endpoint id (random hex): its last characters spread evenly
  let h = 0;
  for (let i = Math.max(0, key.length - 8); i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) | 0;
  return (h >>> 0) % BUCKETS;
}

/** Values that changed or appeared (compared by object identity), and keys that went. */
export interface MapChanges<V> {
  readonly put: V[];
  readonly removed: string[];
}

/** What differs between two maps, added to `out`: values whose object changed or appeared, keys gone. */
export function mapChanges<V>(before: ReadonlyMap<string, V> | undefined, now: ReadonlyMap<string, V> | undefined, out: MapChanges<V> = { put: [], removed: [] }): MapChanges<V> {
  if (now) for (const [k, v] of now) if (before?.get(k) !== v) out.put.push(v);
  if (before) for (const k of before.keys()) if (!now?.has(k)) out.removed.push(k);
  return out;
}

/**
 * A read-only map over buckets that later maps share: what a snapshot holds of one network's
 * endpoints. Iteration goes bucket by bucket (not in insertion order).
 */
export class BucketMap<V> implements ReadonlyMap<string, V> {
  constructor(
    private readonly buckets: readonly (ReadonlyMap<string, V> | undefined)[],
    readonly size: number,
  ) {}

  get(key: string): V | undefined {
    return this.buckets[bucketOf(key)]?.get(key);
  }

  has(key: string): boolean {
    return this.buckets[bucketOf(key)]?.has(key) ?? false;
  }

  *entries(): MapIterator<[string, V]> {
    for (const b of this.buckets) if (b) yield* b.entries();
  }

  *keys(): MapIterator<string> {
    for (const b of this.buckets) if (b) yield* b.keys();
  }

  *values(): MapIterator<V> {
    for (const b of this.buckets) if (b) yield* b.values();
  }

  /**
   * What differs from an earlier map of the same draft ({@link mapChanges}). Buckets both maps share
   * are skipped, so this costs the changed buckets only.
   */
  changesSince(before: BucketMap<V>): MapChanges<V> {
    const out: MapChanges<V> = { put: [], removed: [] };
    for (let i = 0; i < BUCKETS; i++) {
      const a = before.buckets[i];
      const b = this.buckets[i];
      if (a !== b) mapChanges(a, b, out);
    }
    return out;
  }

  [Symbol.iterator](): MapIterator<[string, V]> {
    return this.entries();
  }

  forEach(fn: (value: V, key: string, map: ReadonlyMap<string, V>) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) fn.call(thisArg, v, k, this);
  }
}

/**
 * The working copy behind {@link BucketMap}s: written in place, except that a bucket a snapshot holds
 * is copied before its first change (copy-on-write per bucket). A change after a snapshot thus costs
 * ~1/64 of the map (measured here: `new Map` of 2 000 entries 0.13 ms, of 50 000 entries 13 ms — what
 * copying a whole network's map per event would cost), and a listing of many records (no snapshot in
 * between) is written in place.
 */
class BucketDraft<V> {
  private readonly buckets: (Map<string, V> | undefined)[] = new Array<undefined>(BUCKETS).fill(undefined);
  private readonly frozen: boolean[] = new Array<boolean>(BUCKETS).fill(false);
  private count = 0;
  private view: BucketMap<V> | undefined;

  get size(): number {
    return this.count;
  }

  get(key: string): V | undefined {
    return this.buckets[bucketOf(key)]?.get(key);
  }

  set(key: string, value: V): void {
    const m = this.writable(bucketOf(key));
    if (!m.has(key)) this.count++;
    m.set(key, value);
  }

  delete(key: string): void {
    const b = bucketOf(key);
    if (!this.buckets[b]?.has(key)) return;
    this.writable(b).delete(key);
    this.count--;
  }

  /** An immutable map of the current contents; the same object until the next change. */
  freeze(): BucketMap<V> {
    if (!this.view) {
      this.frozen.fill(true);
      this.view = new BucketMap([...this.buckets], this.count);
    }
    return this.view;
  }

  private writable(b: number): Map<string, V> {
    let m = this.buckets[b];
    if (!m || this.frozen[b]) {
      this.buckets[b] = m = new Map(m);
      this.frozen[b] = false;
    }
    this.view = undefined;
    return m;
  }
}

const isNetwork = (v: NetworkRecord): boolean => typeof v.id === 'string' && typeof v.vni === 'number' && typeof v.subnet === 'string';
const isEndpoint = (v: EndpointRecord): boolean => typeof v.ip === 'string' && typeof v.mac === 'string' && typeof v.node === 'string';
const isNode = (v: NodeRecord): boolean => typeof v.name === 'string' && typeof v.advertise === 'string';

/**
 * The view, kept up to date one event at a time. Networks and nodes are few and are re-indexed (by
 * record id and name, as a full build would) when one of them changes; endpoints are indexed by key
 * and by owner node, and only the maps a change touches are copied when a snapshot holds them.
 */
export class ClusterViewState {
  /** Network and node records by store key, in the mirrors' order; null: the key holds no usable record. */
  private readonly networkByKey = new Map<string, Decoded<NetworkRecord>>();
  private readonly nodeByKey = new Map<string, Decoded<NodeRecord>>();
  private networks: ReadonlyMap<string, NetworkRecord> = new Map();
  private nodes: ReadonlyMap<string, NodeRecord> = new Map();
  /** Working copies of the inner maps; a snapshot freezes them and copies the outer maps. */
  private readonly endpoints = new Map<string, BucketDraft<EndpointRecord>>();
  private readonly byNode = new Map<string, BucketDraft<EndpointRecord>>();
  private snapshotValue: ClusterView | undefined;

  constructor(private readonly onBadRecord?: (key: string, err: unknown) => void) {}

  /** Applies a batch of one mirror's events (a watch batch, or the difference a re-list found). */
  apply(part: ViewPart, events: readonly WatchEvent[]): ViewChange {
    const networks = new Set<string>();
    const endpoints = new Map<string, Set<string>>();
    const nodes = new Set<string>();
    if (part === 'networks') {
      for (const ev of events) {
        const before = this.networkByKey.get(ev.key);
        if (before) networks.add(before.id);
        if (ev.type === 'put') {
          const after = this.decode<NetworkRecord>(ev.key, ev.value, isNetwork);
          this.networkByKey.set(ev.key, after);
          if (after) networks.add(after.id);
        } else this.networkByKey.delete(ev.key);
      }
      if (events.length > 0) this.networks = reindex(this.networkByKey, (n) => n.id);
    } else if (part === 'nodes') {
      for (const ev of events) {
        const before = this.nodeByKey.get(ev.key);
        if (before) nodes.add(before.name);
        if (ev.type === 'put') {
          const after = this.decode<NodeRecord>(ev.key, ev.value, isNode);
          this.nodeByKey.set(ev.key, after);
          if (after) nodes.add(after.name);
        } else this.nodeByKey.delete(ev.key);
      }
      if (events.length > 0) this.nodes = reindex(this.nodeByKey, (n) => n.name);
    } else {
      for (const ev of events) {
        const k = parseEndpointKey(ev.key);
        if (!k) continue;
        const rec = ev.type === 'put' ? this.decode<EndpointRecord>(ev.key, ev.value, isEndpoint) : null;
        this.setEndpoint(k.nid, k.eid, rec ? { ...rec, id: k.eid, network: k.nid } : undefined);
        let eids = endpoints.get(k.nid);
        if (!eids) endpoints.set(k.nid, (eids = new Set()));
        eids.add(k.eid);
      }
    }
    if (events.length > 0) this.snapshotValue = undefined;
    return { networks, endpoints, nodes };
  }

  /** The current view; the same object until the next change. Never changes afterwards. */
  snapshot(): ClusterView {
    this.snapshotValue ??= { networks: this.networks, endpoints: frozen(this.endpoints), nodes: this.nodes, byNode: frozen(this.byNode) };
    return this.snapshotValue;
  }

  private decode<T>(key: string, value: Uint8Array, check: (v: T) => boolean): Decoded<T> {
    try {
      const v = decodeRecord<T>(value, key);
      if (v && typeof v === 'object' && check(v)) return v;
      this.onBadRecord?.(key, new Error('record is missing required fields'));
    } catch (err) {
      this.onBadRecord?.(key, err);
    }
    return null;
  }

  private setEndpoint(nid: string, eid: string, rec: EndpointRecord | undefined): void {
    const before = this.endpoints.get(nid)?.get(eid);
    const nodeKey = `${nid}/${eid}`;
    if (before && (!rec || rec.node !== before.node)) remove(this.byNode, before.node, nodeKey);
    if (!rec) {
      if (before) remove(this.endpoints, nid, eid);
      return;
    }
    draftOf(this.endpoints, nid).set(eid, rec);
    draftOf(this.byNode, rec.node).set(nodeKey, rec);
  }
}

function draftOf<V>(outer: Map<string, BucketDraft<V>>, key: string): BucketDraft<V> {
  let d = outer.get(key);
  if (!d) outer.set(key, (d = new BucketDraft()));
  return d;
}

function remove<V>(outer: Map<string, BucketDraft<V>>, key: string, inner: string): void {
  const d = outer.get(key);
  if (!d) return;
  d.delete(inner);
  if (d.size === 0) outer.delete(key);
}

function frozen<V>(outer: ReadonlyMap<string, BucketDraft<V>>): Map<string, BucketMap<V>> {
  const out = new Map<string, BucketMap<V>>();
  for (const [k, d] of outer) out.set(k, d.freeze());
  return out;
}

function reindex<T>(byKey: ReadonlyMap<string, Decoded<T>>, id: (v: T) => string): Map<string, T> {
  const out = new Map<string, T>();
  for (const v of byKey.values()) if (v) out.set(id(v), v);
  return out;
}

/** Builds a {@link ClusterView} in one go; `onBadRecord` hears about keys that do not hold a usable record. */
export function buildClusterView(sources: ViewSources, onBadRecord?: (key: string, err: unknown) => void): ClusterView {
  const state = new ClusterViewState(onBadRecord);
  const puts = (entries: Iterable<KVEntry>): WatchEvent[] => [...entries].map((e) => ({ type: 'put', key: e.key, value: e.value, revision: e.revision }));
  state.apply('networks', puts(sources.networks));
  state.apply('endpoints', puts(sources.endpoints));
  state.apply('nodes', puts(sources.nodes));
  return state.snapshot();
}

/** Every endpoint of the view, flat. */
export function allEndpoints(view: ClusterView): EndpointRecord[] {
  const out: EndpointRecord[] = [];
  for (const m of view.endpoints.values()) out.push(...m.values());
  return out;
}

/** The endpoints whose owner is `node` (from the by-node index when the view has one). */
export function endpointsOfNode(view: ClusterView, node: string): EndpointRecord[] {
  if (view.byNode) return [...(view.byNode.get(node)?.values() ?? [])];
  return allEndpoints(view).filter((e) => e.node === node);
}

/** The node names that own at least one endpoint. */
export function endpointOwners(view: ClusterView): Iterable<string> {
  if (view.byNode) return view.byNode.keys();
  return new Set(allEndpoints(view).map((e) => e.node));
}
