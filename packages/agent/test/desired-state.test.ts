import test from 'ava';
import { buildClusterView, type ClusterView } from '../src/cluster-view.ts';
import { computeDesiredState } from '../src/desired-state.ts';
import { encodeRecord, keys, type EndpointRecord, type NetworkRecord, type NodeRecord } from '../src/layout.ts';

const nidA = 'a'.repeat(64);
const nidB = 'b'.repeat(64);
const eid = (c: string): string => c.repeat(64);

function net(id: string, over: Partial<NetworkRecord> = {}): NetworkRecord {
  return {
    id, name: `n-${id[0]}`, vni: 4096 + id.charCodeAt(0), poolId: `p${id[0]}`, subnet: '10.0.1.0/24', gateway: '10.0.1.1',
    auxAddresses: {}, internal: false, labels: {}, options: {}, createdAt: '2026-01-01T00:00:00Z', createdBy: 'h1', ...over,
  };
}
function ep(network: string, id: string, node: string, ip: string, over: Partial<EndpointRecord> = {}): EndpointRecord {
  return { id, name: id.slice(0, 4), network, node, nodeId: `id-${node}`, address: `${ip}/24`, ip, mac: `02:42:0a:00:01:${Number(ip.split('.')[3]).toString(16).padStart(2, '0')}`, netns: `/run/netns/${id.slice(0, 3)}`, ifname: 'eth0', createdAt: '', ...over };
}
function node(name: string, advertise: string): NodeRecord {
  return { name, advertise, advertiseAddr: advertise, version: '0', startedAt: '', nodeId: `id-${name}` };
}
function view(networks: NetworkRecord[], endpoints: EndpointRecord[], nodes: NodeRecord[]): ClusterView {
  const entry = (key: string, v: unknown) => ({ key, value: encodeRecord(v), revision: '1' });
  return buildClusterView({
    networks: networks.map((n) => entry(keys.network(n.id), n)),
    endpoints: endpoints.map((e) => entry(keys.endpoint(e.network, e.id), e)),
    nodes: nodes.map((n) => entry(keys.node(n.name), n)),
  });
}

test('only networks with a local endpoint; local endpoints as sandboxes; remote live endpoints as peers', (t) => {
  const v = view(
    [net(nidA), net(nidB)],
    [
      ep(nidA, eid('1'), 'h1', '10.0.1.2'),
      ep(nidA, eid('2'), 'h2', '10.0.1.3'),
      ep(nidA, eid('3'), 'h3', '10.0.1.4'),
      ep(nidB, eid('4'), 'h2', '10.0.1.5'), // no local endpoint on B: B is not programmed on h1
    ],
    [node('h1', '198.18.0.1'), node('h2', '198.18.0.2'), node('h3', '198.18.0.3')],
  );
  const r = computeDesiredState({ view: v, node: 'h1', egress: new Map([[eid('1'), '172.18.0.2/16']]) });
  t.is(r.state.networks.length, 1);
  const n = r.state.networks[0]!;
  t.is(n.id, nidA);
  t.deepEqual(n.subnets, [{ cidr: '10.0.1.0/24', gateway: '10.0.1.1' }]);
  t.deepEqual(n.endpoints, [
    { id: eid('1'), address: '10.0.1.2/24', mac: '02:42:0a:00:01:02', sandbox: { path: '/run/netns/111', ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16' } } },
  ]);
  t.deepEqual(n.peers, [
    { ip: '10.0.1.3', mac: '02:42:0a:00:01:03', vtep: '198.18.0.2' },
    { ip: '10.0.1.4', mac: '02:42:0a:00:01:04', vtep: '198.18.0.3' },
  ]);
  t.is(r.peers, 2);
  t.deepEqual(r.localEndpoints.map((e) => e.id), [eid('1')]);
});

test('a node without a live record keeps its peers at the address its endpoints recorded', (t) => {
  const v = view(
    [net(nidA)],
    [
      ep(nidA, eid('1'), 'h1', '10.0.1.2'),
      ep(nidA, eid('2'), 'away', '10.0.1.3', { vtep: '198.18.0.9' }),
      ep(nidA, eid('3'), 'old', '10.0.1.4'), // written without a vtep: nowhere to send to
      ep(nidA, eid('4'), 'h2', '10.0.1.5', { vtep: '198.18.0.99' }), // a live record wins over the recorded address
    ],
    [node('h1', '198.18.0.1'), node('h2', '198.18.0.2')],
  );
  const r = computeDesiredState({ view: v, node: 'h1', egress: new Map() });
  t.deepEqual(r.state.networks[0]!.peers, [
    { ip: '10.0.1.3', mac: '02:42:0a:00:01:03', vtep: '198.18.0.9' },
    { ip: '10.0.1.5', mac: '02:42:0a:00:01:05', vtep: '198.18.0.2' },
  ]);
});

test('internal networks get no egress even when an address exists; no egress address means none', (t) => {
  const v = view([net(nidA, { internal: true }), net(nidB, { subnet: '10.0.2.0/24', gateway: '10.0.2.1' })], [
    ep(nidA, eid('1'), 'h1', '10.0.1.2'),
    ep(nidB, eid('2'), 'h1', '10.0.2.2', { address: '10.0.2.2/24' }),
  ], [node('h1', '198.18.0.1')]);
  const r = computeDesiredState({ view: v, node: 'h1', egress: new Map([[eid('1'), '172.18.0.2/16']]) });
  t.is(r.state.networks.length, 2);
  for (const n of r.state.networks) t.is(n.endpoints[0]!.sandbox!.egress, undefined);
  t.true(r.state.networks.find((n) => n.id === nidA)!.internal);
});

test('nothing local: empty desired state (every overlay namespace of the prefix goes)', (t) => {
  const v = view([net(nidA)], [ep(nidA, eid('2'), 'h2', '10.0.1.3')], [node('h1', '198.18.0.1'), node('h2', '198.18.0.2')]);
  t.deepEqual(computeDesiredState({ view: v, node: 'h1', egress: new Map() }).state, { networks: [] });
});

test('an endpoint whose network record is missing is reported local but not programmed', (t) => {
  const v = view([], [ep(nidA, eid('1'), 'h1', '10.0.1.2')], [node('h1', '198.18.0.1')]);
  const r = computeDesiredState({ view: v, node: 'h1', egress: new Map() });
  t.deepEqual(r.state.networks, []);
  t.is(r.localEndpoints.length, 1);
});

test('unreadable records are skipped and reported', (t) => {
  const bad: string[] = [];
  const v = buildClusterView(
    {
      networks: [{ key: keys.network(nidA), value: new TextEncoder().encode('{not json'), revision: '1' }],
      endpoints: [{ key: keys.endpoint(nidA, eid('1')), value: encodeRecord({ name: 'x' }), revision: '1' }],
      nodes: [],
    },
    (key) => bad.push(key),
  );
  t.is(v.networks.size, 0);
  t.is(v.endpoints.size, 0);
  t.deepEqual(bad, [keys.network(nidA), keys.endpoint(nidA, eid('1'))]);
});
