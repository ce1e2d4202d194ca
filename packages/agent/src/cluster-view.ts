/**
 * The agent's picture of the cluster, rebuilt from the prefix mirrors on every reconcile. Records
 * that cannot be decoded are skipped (and reported), never fatal: one bad key must not stop a host
 * from programming every other network.
 */

import type { KVEntry } from '@kvnet/store';
import {
  decodeRecord,
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
}

export interface ViewSources {
  readonly networks: Iterable<KVEntry>;
  readonly endpoints: Iterable<KVEntry>;
  readonly nodes: Iterable<KVEntry>;
}

/** Builds a {@link ClusterView}; `onBadRecord` hears about keys that do not hold a usable record. */
export function buildClusterView(sources: ViewSources, onBadRecord?: (key: string, err: unknown) => void): ClusterView {
  const networks = new Map<string, NetworkRecord>();
  const endpoints = new Map<string, Map<string, EndpointRecord>>();
  const nodes = new Map<string, NodeRecord>();
  const decode = <T>(entry: KVEntry, check: (v: T) => boolean): T | undefined => {
    try {
      const v = decodeRecord<T>(entry.value, entry.key);
      if (v && typeof v === 'object' && check(v)) return v;
      onBadRecord?.(entry.key, new Error('record is missing required fields'));
    } catch (err) {
      onBadRecord?.(entry.key, err);
    }
    return undefined;
  };
  for (const entry of sources.networks) {
    const n = decode<NetworkRecord>(entry, (v) => typeof v.id === 'string' && typeof v.vni === 'number' && typeof v.subnet === 'string');
    if (n) networks.set(n.id, n);
  }
  for (const entry of sources.endpoints) {
    const k = parseEndpointKey(entry.key);
    if (!k) continue;
    const e = decode<EndpointRecord>(entry, (v) => typeof v.ip === 'string' && typeof v.mac === 'string' && typeof v.node === 'string');
    if (!e) continue;
    let m = endpoints.get(k.nid);
    if (!m) endpoints.set(k.nid, (m = new Map()));
    m.set(k.eid, { ...e, id: k.eid, network: k.nid });
  }
  for (const entry of sources.nodes) {
    const n = decode<NodeRecord>(entry, (v) => typeof v.name === 'string' && typeof v.advertise === 'string');
    if (n) nodes.set(n.name, n);
  }
  return { networks, endpoints, nodes };
}

/** Every endpoint of the view, flat. */
export function allEndpoints(view: ClusterView): EndpointRecord[] {
  const out: EndpointRecord[] = [];
  for (const m of view.endpoints.values()) out.push(...m.values());
  return out;
}
