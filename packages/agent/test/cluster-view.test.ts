import test from 'ava';
import type { WatchEvent } from '@kvnet/store';
import { buildClusterView, ClusterViewState, endpointOwners, endpointsOfNode, type ClusterView, type ViewPart } from '../src/cluster-view.ts';
import { encodeRecord, keys, type EndpointRecord, type NetworkRecord, type NodeRecord } from '../src/layout.ts';

const hex = (n: number, len = 64): string => n.toString(16).padStart(len, '0');
const nid = (i: number): string => `a${hex(i, 63)}`;
const eid = (i: number): string => `e${hex(i, 63)}`;

function net(id: string, name = `n-${id.slice(-3)}`): NetworkRecord {
  return { id, name, vni: 4096 + (parseInt(id.slice(-4), 16) % 1000), poolId: 'p', subnet: '10.0.0.0/16', gateway: '10.0.0.1', auxAddresses: {}, internal: false, labels: {}, options: {}, createdAt: '', createdBy: 'h1' };
}
function ep(network: string, id: string, node: string, n: number): EndpointRecord {
  const ip = `10.0.${(n >> 8) & 255}.${n & 255}`;
  return { id, name: `e${n}`, network, node, nodeId: `id-${node}`, address: `${ip}/16`, ip, mac: `02:42:0a:00:${((n >> 8) & 255).toString(16).padStart(2, '0')}:${(n & 255).toString(16).padStart(2, '0')}`, createdAt: `2026-01-01T00:00:${String(n % 60).padStart(2, '0')}Z` };
}
function node(name: string, advertise: string): NodeRecord {
  return { name, advertise, advertiseAddr: advertise, version: '0', startedAt: '', nodeId: `id-${name}` };
}
const put = (key: string, v: unknown, rev = 1): WatchEvent => ({ type: 'put', key, value: encodeRecord(v), revision: String(rev) });
const del = (key: string): WatchEvent => ({ type: 'delete', key, revision: '' });

/** A plain, order-insensitive picture of a view, for comparisons. */
function plain(v: ClusterView): unknown {
  const sorted = <T>(m: ReadonlyMap<string, T>): [string, T][] => [...m].sort(([a], [b]) => a.localeCompare(b));
  return {
    networks: [...v.networks],
    nodes: [...v.nodes],
    endpoints: sorted(v.endpoints).map(([k, m]) => [k, sorted(m)]),
    byNode: v.byNode ? sorted(v.byNode).map(([k, m]) => [k, sorted(m)]) : undefined,
  };
}

/** A tiny deterministic random generator (tests must not flake). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('events applied one batch at a time give the view a build from the final entries gives', (t) => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const r = rng(seed);
    const state = new ClusterViewState();
    const store = { networks: new Map<string, Uint8Array>(), endpoints: new Map<string, Uint8Array>(), nodes: new Map<string, Uint8Array>() };
    const nodes = ['h1', 'h2', 'h3', 'h4'];
    for (let step = 0; step < 400; step++) {
      const part: ViewPart = r() < 0.1 ? 'networks' : r() < 0.15 ? 'nodes' : 'endpoints';
      const events: WatchEvent[] = [];
      for (let k = 0; k < 1 + Math.floor(r() * 4); k++) {
        if (part === 'networks') {
          const id = nid(Math.floor(r() * 4));
          events.push(r() < 0.25 ? del(keys.network(id)) : put(keys.network(id), r() < 0.05 ? { broken: true } : net(id, `n${Math.floor(r() * 9)}`), step));
        } else if (part === 'nodes') {
          const name = nodes[Math.floor(r() * nodes.length)]!;
          events.push(r() < 0.3 ? del(keys.node(name)) : put(keys.node(name), node(name, `198.18.0.${Math.floor(r() * 9)}`), step));
        } else {
          const n = Math.floor(r() * 60);
          const network = nid(n % 3);
          const key = keys.endpoint(network, eid(n));
          events.push(r() < 0.3 ? del(key) : put(key, r() < 0.03 ? { ip: 5 } : ep(network, eid(n), nodes[Math.floor(r() * nodes.length)]!, n), step));
        }
      }
      for (const ev of events) {
        const m = store[part];
        if (ev.type === 'put') m.set(ev.key, ev.value);
        else m.delete(ev.key);
      }
      const before = r() < 0.5 ? state.snapshot() : undefined;
      const frozen = before ? JSON.stringify(plain(before)) : '';
      state.apply(part, events);
      if (before) t.is(JSON.stringify(plain(before)), frozen, 'a snapshot never changes');
      const entries = (m: Map<string, Uint8Array>) => [...m].map(([key, value]) => ({ key, value, revision: '1' }));
      const built = buildClusterView({ networks: entries(store.networks), endpoints: entries(store.endpoints), nodes: entries(store.nodes) });
      if (step % 20 === 0 || step === 399) t.deepEqual(plain(state.snapshot()), plain(built), `seed ${seed} step ${step}`);
    }
  }
});

test('a change shares everything it did not touch with the previous snapshot, and says what it touched', (t) => {
  const state = new ClusterViewState();
  state.apply('networks', [put(keys.network(nid(1)), net(nid(1))), put(keys.network(nid(2)), net(nid(2)))]);
  state.apply('nodes', [put(keys.node('h1'), node('h1', '198.18.0.1')), put(keys.node('h2'), node('h2', '198.18.0.2'))]);
  const eps = Array.from({ length: 300 }, (_, i) => ep(nid(1 + (i % 2)), eid(i), i % 3 === 0 ? 'h1' : 'h2', i));
  state.apply('endpoints', eps.map((e) => put(keys.endpoint(e.network, e.id), e)));
  const a = state.snapshot();
  t.is(state.snapshot(), a, 'the same object until something changes');

  const moved = ep(nid(1), eid(0), 'h2', 0);
  const change = state.apply('endpoints', [put(keys.endpoint(nid(1), eid(0)), moved)]);
  t.deepEqual([...change.endpoints].map(([k, v]) => [k, [...v]]), [[nid(1), [eid(0)]]]);
  t.is(change.networks.size + change.nodes.size, 0);
  const b = state.snapshot();
  t.not(b, a);
  t.is(b.networks, a.networks, 'networks untouched: same map');
  t.is(b.nodes, a.nodes);
  t.is(b.endpoints.get(nid(2)), a.endpoints.get(nid(2)), "the other network's endpoints: same map");
  t.not(b.endpoints.get(nid(1)), a.endpoints.get(nid(1)));
  t.is(a.endpoints.get(nid(1))!.get(eid(0))!.node, 'h1', 'the old snapshot keeps the old record');
  t.is(b.endpoints.get(nid(1))!.get(eid(0))!.node, 'h2');
  t.is(b.endpoints.get(nid(1))!.size, 150);
  t.deepEqual(endpointsOfNode(b, 'h1').map((e) => e.id).sort(), eps.filter((e) => e.node === 'h1' && e.id !== eid(0)).map((e) => e.id).sort());
  t.deepEqual([...endpointOwners(b)].sort(), ['h1', 'h2']);

  const gone = state.apply('nodes', [del(keys.node('h2'))]);
  t.deepEqual([...gone.nodes], ['h2']);
  t.false(state.snapshot().nodes.has('h2'));
  t.is(state.snapshot().endpoints, state.snapshot().endpoints);
});

test('an unreadable record is reported and leaves the view as if it were absent', (t) => {
  const bad: string[] = [];
  const state = new ClusterViewState((key) => bad.push(key));
  const e = ep(nid(1), eid(1), 'h1', 1);
  state.apply('endpoints', [put(keys.endpoint(nid(1), eid(1)), e)]);
  state.apply('endpoints', [{ type: 'put', key: keys.endpoint(nid(1), eid(1)), value: new TextEncoder().encode('{not json'), revision: '2' }]);
  t.deepEqual(bad, [keys.endpoint(nid(1), eid(1))]);
  t.false(state.snapshot().endpoints.has(nid(1)));
  t.deepEqual([...endpointOwners(state.snapshot())], []);
});

test('views built by hand (no by-node index) answer the same questions by a pass over every endpoint', (t) => {
  const e1 = ep(nid(1), eid(1), 'h1', 1);
  const e2 = ep(nid(1), eid(2), 'h2', 2);
  const v: ClusterView = { networks: new Map(), nodes: new Map(), endpoints: new Map([[nid(1), new Map([[eid(1), e1], [eid(2), e2]])]]) };
  t.deepEqual(endpointsOfNode(v, 'h2'), [e2]);
  t.deepEqual([...endpointOwners(v)].sort(), ['h1', 'h2']);
});
