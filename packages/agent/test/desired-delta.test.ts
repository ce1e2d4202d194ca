import test from 'ava';
import type { DesiredPeer, DesiredState } from '@kvnet/dataplane';
import type { WatchEvent } from '@kvnet/store';
import { ClusterViewState, type ClusterView, type ViewChange, type ViewPart } from '../src/cluster-view.ts';
import { computeDesiredState, desiredDelta } from '../src/desired-state.ts';
import { encodeRecord, keys, type EndpointRecord, type NetworkRecord, type NodeRecord } from '../src/layout.ts';

const hex = (n: number, len: number): string => n.toString(16).padStart(len, '0');
const nid = (i: number): string => `a${hex(i, 63)}`;
const eid = (i: number): string => `e${hex(i, 63)}`;
const ME = 'h1';

function net(id: string, over: Partial<NetworkRecord> = {}): NetworkRecord {
  return { id, name: `n-${id.slice(-2)}`, vni: 4096 + parseInt(id.slice(-2), 16), poolId: 'p', subnet: '10.0.0.0/16', gateway: '10.0.0.1', auxAddresses: {}, internal: false, labels: {}, options: {}, createdAt: '', createdBy: ME, ...over };
}
function ep(network: string, n: number, node: string, over: Partial<EndpointRecord> = {}): EndpointRecord {
  const ip = `10.0.${(n >> 8) & 255}.${n & 255}`;
  return { id: eid(n), name: `e${n}`, network, node, nodeId: `id-${node}`, address: `${ip}/16`, ip, mac: `02:42:0a:00:${hex((n >> 8) & 255, 2)}:${hex(n & 255, 2)}`, netns: `/run/netns/c${n}`, ifname: 'eth0', vtep: `198.18.1.${n % 7}`, createdAt: `2026-01-01T00:${hex(n % 60, 2)}:00Z`, ...over };
}
function node(name: string, advertise: string): NodeRecord {
  return { name, advertise, advertiseAddr: advertise, version: '0', startedAt: '', nodeId: `id-${name}` };
}
const put = (key: string, v: unknown): WatchEvent => ({ type: 'put', key, value: encodeRecord(v), revision: '1' });
const del = (key: string): WatchEvent => ({ type: 'delete', key, revision: '' });

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const desired = (view: ClusterView): DesiredState => computeDesiredState({ view, node: ME, egress: new Map() }).state;
const peerKey = (p: DesiredPeer): string => JSON.stringify(p);

/** `state` without its peers (what a peers-only delta must leave alone). */
function structure(state: DesiredState): unknown {
  return state.networks.map((n) => ({ ...n, peers: undefined }));
}

/** Applies peer deltas to `state`'s peers (as multisets per network). */
function applyDeltas(state: DesiredState, deltas: readonly { network: string; remove: readonly DesiredPeer[]; add: readonly DesiredPeer[] }[]): Map<string, string[]> {
  const out = new Map(state.networks.map((n) => [n.id, n.peers.map(peerKey)]));
  for (const d of deltas) {
    const list = out.get(d.network)!;
    for (const p of d.remove) {
      const i = list.indexOf(peerKey(p));
      if (i < 0) throw new Error(`removed peer ${peerKey(p)} was not there`);
      list.splice(i, 1);
    }
    list.push(...d.add.map(peerKey));
  }
  return out;
}

test('a peers delta moves the desired state exactly as a full recompute does; anything else is full', (t) => {
  let peersDeltas = 0;
  let fulls = 0;
  let dualStackAdds = 0;
  for (const seed of [11, 12, 13, 14, 15, 16]) {
    const r = rng(seed);
    const state = new ClusterViewState();
    const nodes = ['h1', 'h2', 'h3', 'h4'];
    state.apply('networks', [0, 1, 2].map((i) => put(keys.network(nid(i)), net(nid(i)))));
    state.apply('nodes', nodes.map((n, i) => put(keys.node(n), node(n, `198.18.0.${i + 1}`))));
    // h1 has endpoints on networks 0 and 1 only
    state.apply('endpoints', [put(keys.endpoint(nid(0), eid(1000)), ep(nid(0), 1000, ME)), put(keys.endpoint(nid(1), eid(1001)), ep(nid(1), 1001, ME))]);
    let before = state.snapshot();
    for (let step = 0; step < 300; step++) {
      const changes: ViewChange[] = [];
      for (let b = 0; b < 1 + Math.floor(r() * 3); b++) {
        const x = r();
        let part: ViewPart;
        const events: WatchEvent[] = [];
        if (x < 0.05) {
          part = 'networks';
          const id = nid(Math.floor(r() * 3));
          events.push(put(keys.network(id), net(id, { labels: { v: String(step) } })));
        } else if (x < 0.12) {
          part = 'nodes';
          const name = nodes[1 + Math.floor(r() * 3)]!;
          events.push(r() < 0.4 ? del(keys.node(name)) : put(keys.node(name), node(name, `198.18.0.${Math.floor(r() * 5) + 1}`)));
        } else {
          part = 'endpoints';
          const n = Math.floor(r() * 40);
          const network = nid(n % 3);
          const owner = r() < 0.03 ? ME : nodes[1 + Math.floor(r() * 3)]!;
          const key = keys.endpoint(network, eid(n));
          // some endpoints are dual-stack: their peers carry an IPv6 address (one NDP entry beside the ARP one)
          const v6 = r() < 0.3 ? { address6: `fd00::${hex(n, 4)}/64`, ip6: `fd00::${hex(n, 4)}` } : {};
          events.push(r() < 0.35 ? del(key) : put(key, ep(network, n, owner, r() < 0.2 ? { vtep: undefined, ...v6 } : v6)));
        }
        changes.push(state.apply(part, events));
      }
      const after = state.snapshot();
      const d0 = desired(before);
      const d1 = desired(after);
      const delta = desiredDelta({ before, after, changes, node: ME, programmed: new Set(d0.networks.map((n) => n.id)) });
      if (delta.kind === 'peers') {
        peersDeltas++;
        t.deepEqual(structure(d1), structure(d0), `step ${step}: nothing but peers moved`);
        const moved = applyDeltas(d0, delta.deltas);
        for (const n of d1.networks) t.deepEqual([...moved.get(n.id)!].sort(), n.peers.map(peerKey).sort(), `seed ${seed} step ${step} network ${n.id.slice(-2)}`);
        t.is(delta.peerCount, d1.networks.reduce((s, n) => s + n.peers.length, 0) - d0.networks.reduce((s, n) => s + n.peers.length, 0));
        t.true(delta.deltas.every((dd) => d0.networks.some((n) => n.id === dd.network)), 'no work for a network this host does not program');
        if (delta.deltas.some((dd) => dd.add.some((p) => p.ipv6 !== undefined && p.ip !== undefined))) dualStackAdds++;
      } else fulls++;
      before = after;
    }
  }
  t.true(peersDeltas > 1000 && fulls > 50, `both paths exercised (${peersDeltas} peers, ${fulls} full)`);
  t.true(dualStackAdds > 50, `dual-stack peers added by deltas (${dualStackAdds})`);
});

test('churn on a network this host has no endpoint on is an empty delta; a local endpoint or a used network record is full', (t) => {
  const state = new ClusterViewState();
  state.apply('networks', [put(keys.network(nid(0)), net(nid(0))), put(keys.network(nid(1)), net(nid(1)))]);
  state.apply('nodes', [put(keys.node(ME), node(ME, '198.18.0.1')), put(keys.node('h2'), node('h2', '198.18.0.2'))]);
  state.apply('endpoints', [put(keys.endpoint(nid(0), eid(1)), ep(nid(0), 1, ME))]);
  const programmed = new Set([nid(0)]);
  const before = state.snapshot();
  const other = [state.apply('endpoints', [put(keys.endpoint(nid(1), eid(2)), ep(nid(1), 2, 'h2'))])];
  t.deepEqual(desiredDelta({ before, after: state.snapshot(), changes: other, node: ME, programmed }), { kind: 'peers', deltas: [], peerCount: 0 });
  const otherRecord = [state.apply('networks', [put(keys.network(nid(1)), net(nid(1), { labels: { x: 'y' } }))])];
  t.is(desiredDelta({ before, after: state.snapshot(), changes: otherRecord, node: ME, programmed }).kind, 'peers');

  const b2 = state.snapshot();
  const local = [state.apply('endpoints', [put(keys.endpoint(nid(1), eid(3)), ep(nid(1), 3, ME))])];
  t.like(desiredDelta({ before: b2, after: state.snapshot(), changes: local, node: ME, programmed }), { kind: 'full' });
  const b3 = state.snapshot();
  const used = [state.apply('networks', [put(keys.network(nid(0)), net(nid(0), { internal: true }))])];
  t.like(desiredDelta({ before: b3, after: state.snapshot(), changes: used, node: ME, programmed }), { kind: 'full' });
});

test('a node that moved to another address moves its endpoints\' peers', (t) => {
  const state = new ClusterViewState();
  state.apply('networks', [put(keys.network(nid(0)), net(nid(0)))]);
  state.apply('nodes', [put(keys.node(ME), node(ME, '198.18.0.1')), put(keys.node('h2'), node('h2', '198.18.0.2'))]);
  state.apply('endpoints', [put(keys.endpoint(nid(0), eid(1)), ep(nid(0), 1, ME)), put(keys.endpoint(nid(0), eid(2)), ep(nid(0), 2, 'h2'))]);
  const before = state.snapshot();
  const changes = [state.apply('nodes', [put(keys.node('h2'), node('h2', '198.18.0.9'))])];
  const delta = desiredDelta({ before, after: state.snapshot(), changes, node: ME, programmed: new Set([nid(0)]) });
  t.deepEqual(delta, {
    kind: 'peers',
    deltas: [{ network: nid(0), remove: [{ ip: '10.0.0.2', mac: '02:42:0a:00:00:02', vtep: '198.18.0.2' }], add: [{ ip: '10.0.0.2', mac: '02:42:0a:00:00:02', vtep: '198.18.0.9' }] }],
    peerCount: 0,
  });
});
