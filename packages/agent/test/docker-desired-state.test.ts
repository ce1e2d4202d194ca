/** Pure logic of the Docker side: endpoints in the desired state, the Engine API body of a mirrored network, stale-endpoint detection (fake engine). */

import test from 'ava';
import type { ClusterView } from '../src/cluster-view.ts';
import type { DockerEndpointRecord, DockerNetworkRecord } from '../src/docker/backend.ts';
import { dockerNetworkSpec } from '../src/docker/network-sync.ts';
import { computeDesiredState } from '../src/desired-state.ts';
import type { EndpointRecord, NodeRecord } from '../src/layout.ts';

const N1 = '1'.repeat(64);
const N2 = '2'.repeat(64);
const net = (id: string, subnet: string, gateway: string, vni: number): DockerNetworkRecord => ({
  id, name: `n${vni}`, vni, poolId: `p${vni}`, subnet, gateway, auxAddresses: {}, internal: false, labels: {}, options: {}, createdAt: '', createdBy: 'h1',
});
const ep = (id: string, nid: string, node: string, ip: string, extra: Partial<DockerEndpointRecord> = {}): DockerEndpointRecord => ({
  id, name: id.slice(0, 4), network: nid, node, nodeId: node, address: `${ip}/24`, ip, mac: `02:42:${ip.split('.').map((x) => Number(x).toString(16).padStart(2, '0')).join(':')}`, vtep: node === 'h2' ? '198.18.0.2' : '198.18.0.1', createdAt: id, ...extra,
});

function view(endpoints: EndpointRecord[]): ClusterView {
  const byNet = new Map<string, Map<string, EndpointRecord>>();
  for (const e of endpoints) {
    if (!byNet.has(e.network)) byNet.set(e.network, new Map());
    byNet.get(e.network)!.set(e.id, e);
  }
  const nodes = new Map<string, NodeRecord>([['h2', { name: 'h2', advertise: '198.18.0.22', advertiseAddr: '198.18.0.22', version: '', startedAt: '', nodeId: 'h2' }]]);
  return { networks: new Map([[N1, net(N1, '10.1.0.0/24', '10.1.0.1', 300)], [N2, net(N2, '10.2.0.0/24', '10.2.0.1', 301)]]), endpoints: byNet, nodes };
}

test('a network with only Docker endpoints here is added whole, with its peers at the live node address', (t) => {
  const v = view([ep('a1', N1, 'h1', '10.1.0.2', { handoff: 'kvda1' }), ep('b1', N1, 'h2', '10.1.0.3'), ep('c1', N1, 'h3', '10.1.0.4', { vtep: '198.18.0.3' })]);
  const state = computeDesiredState({ view: v, node: 'h1', egress: new Map() }).state;
  t.deepEqual(state.networks, [
    {
      id: N1, vni: 300, internal: false, subnets: [{ cidr: '10.1.0.0/24', gateway: '10.1.0.1' }],
      endpoints: [{ id: 'a1', address: '10.1.0.2/24', mac: '02:42:0a:01:00:02', handoff: { hostIfname: 'kvda1' } }],
      peers: [{ ip: '10.1.0.3', mac: '02:42:0a:01:00:03', vtep: '198.18.0.22' }, { ip: '10.1.0.4', mac: '02:42:0a:01:00:04', vtep: '198.18.0.3' }],
    },
  ]);
});

test('Docker endpoints join the standalone ones of the same network; other networks pass through unchanged', (t) => {
  const v = view([
    ep('a1', N1, 'h1', '10.1.0.2', { netns: '/run/netns/x', ifname: 'eth0' }),
    ep('a2', N1, 'h1', '10.1.0.5', { handoff: 'kvda2' }),
    ep('b2', N2, 'h1', '10.2.0.2', { netns: '/run/netns/y' }),
    ep('z2', N2, 'h2', '10.2.0.9'),
  ]);
  const state = computeDesiredState({ view: v, node: 'h1', egress: new Map() }).state;
  const withoutDocker = computeDesiredState({ view: view([ep('a1', N1, 'h1', '10.1.0.2', { netns: '/run/netns/x', ifname: 'eth0' }), ep('b2', N2, 'h1', '10.2.0.2', { netns: '/run/netns/y' }), ep('z2', N2, 'h2', '10.2.0.9')]), node: 'h1', egress: new Map() }).state;
  t.deepEqual(state.networks.map((n) => n.id), [N1, N2]);
  t.deepEqual(state.networks[0]!.endpoints.map((e) => [e.id, e.sandbox ? 'sandbox' : 'handoff']), [['a1', 'sandbox'], ['a2', 'handoff']]);
  t.deepEqual(state.networks[1], withoutDocker.networks.find((n) => n.id === N2), 'a network without Docker endpoints is as it would be without any');
  const remoteOnly = view([ep('a1', N1, 'h1', '10.1.0.2', { netns: '/run/netns/x', ifname: 'eth0' }), ep('a2', N1, 'h2', '10.1.0.5', { handoff: 'kvda2' })]);
  const n1 = computeDesiredState({ view: remoteOnly, node: 'h1', egress: new Map() }).state.networks[0]!;
  t.deepEqual(n1.endpoints.map((e) => e.id), ['a1'], "another node's Docker endpoint is a peer, not a local endpoint");
  t.deepEqual(n1.peers, [{ ip: '10.1.0.5', mac: '02:42:0a:01:00:05', vtep: '198.18.0.22' }]);
});

test('the Engine API body of a mirrored network carries everything and the adopt option', (t) => {
  const n: DockerNetworkRecord = { ...net(N1, '10.1.0.0/24', '10.1.0.254', 300), name: 'multi', ipRange: '10.1.0.128/25', auxAddresses: { r1: '10.1.0.5' }, internal: true, labels: { a: 'b' }, options: { myopt: 'foo' } };
  t.deepEqual(dockerNetworkSpec(n), {
    Name: 'multi', Driver: 'kvnet', CheckDuplicate: true, Internal: true, Labels: { a: 'b' }, Options: { myopt: 'foo' },
    IPAM: { Driver: 'kvnet', Options: { 'kvnet.network': N1 }, Config: [{ Subnet: '10.1.0.0/24', Gateway: '10.1.0.254', IPRange: '10.1.0.128/25', AuxiliaryAddresses: { r1: '10.1.0.5' } }] },
  });
});

test('stale Docker endpoints: removed only after the grace, only when dockerd answers and does not list them', async (t) => {
  const { DockerNetworkSync } = await import('../src/docker/network-sync.ts');
  const { pino } = await import('pino');
  const D = 'd'.repeat(64);
  const n = { ...net(N1, '10.1.0.0/24', '10.1.0.1', 300), docker: { networks: { h1: D } } };
  const mk = (id: string, createdAt: string) => ep(id, N1, 'h1', `10.1.0.${id.length + 1}`, { docker: { networkId: D, endpointId: `${id}-docker` }, handoff: `kvd${id}`, createdAt });
  const v: ClusterView = { networks: new Map([[N1, n]]), endpoints: new Map([[N1, new Map<string, EndpointRecord>([['live', mk('live', '2026-01-01T00:00:00Z')], ['gone', mk('gone0', '2026-01-01T00:00:00Z')], ['young', mk('young00', '2026-01-01T00:09:59Z')]])]]), nodes: new Map() };
  // ids are taken from the map values
  let reachable = true;
  const engine = {
    listNetworks: async () => (reachable ? [{ Id: D, Name: n.name, Driver: 'kvnet', Scope: 'local' }] : Promise.reject(new Error('down'))),
    inspectNetwork: async () => ({ Id: D, Name: n.name, Driver: 'kvnet', Scope: 'local', Containers: { c1: { Name: 'c1', EndpointID: 'live-docker' } } }),
    listContainers: async () => (reachable ? [{ Id: 'c1', Names: ['/c1'], State: 'running', NetworkSettings: { Networks: { [n.name]: { NetworkID: D, EndpointID: 'live-docker' } } } }] : Promise.reject(new Error('down'))),
    createNetwork: async () => 'x',
    removeNetwork: async () => undefined,
  };
  const removed: string[] = [];
  const sync = new DockerNetworkSync({ engine: engine as never, node: 'h1', logger: pino({ level: 'silent' }), removeEndpoint: async (_n, e) => void removed.push(e), staleAfterMs: 60_000, now: () => Date.parse('2026-01-01T00:10:00Z') });
  const r = await sync.run(() => v);
  t.deepEqual(removed, ['gone0-docker'], 'not the listed one, not the one inside its grace');
  t.deepEqual(r.staleEndpoints, ['gone0']);
  reachable = false;
  removed.length = 0;
  await t.throwsAsync(() => sync.run(() => v), { message: 'down' });
  t.deepEqual(removed, [], 'dockerd unreachable: nothing removed');
});

test('stale Docker endpoints, global scope: a network dockerd stops listing (its cluster store is down) does not make live endpoints stale', async (t) => {
  const { DockerNetworkSync } = await import('../src/docker/network-sync.ts');
  const { pino } = await import('pino');
  const D = 'd'.repeat(64);
  const n = { ...net(N1, '10.1.0.0/24', '10.1.0.1', 300), docker: { networks: { h2: D } } };
  const mk = (id: string) => ep(id, N1, 'h1', `10.1.0.${id.length + 1}`, { docker: { networkId: D, endpointId: `${id}-docker` }, handoff: `kvd${id}`, createdAt: '2026-01-01T00:00:00Z' });
  const v: ClusterView = { networks: new Map([[N1, n]]), endpoints: new Map([[N1, new Map<string, EndpointRecord>([['live', mk('live')], ['gone', mk('gone0')]])]]), nodes: new Map() };
  // dockerd with an unreachable cluster store: the global network is missing from GET /networks and
  // GET /networks/<id> is a 404, but the running container still holds its endpoint
  const engine = {
    listNetworks: async () => [],
    inspectNetwork: async () => undefined,
    listContainers: async () => [{ Id: 'c1', Names: ['/c1'], State: 'running', NetworkSettings: { Networks: { [n.name]: { NetworkID: D, EndpointID: 'live-docker' } } } }],
    createNetwork: async () => 'x',
    removeNetwork: async () => undefined,
  };
  const removed: string[] = [];
  const sync = new DockerNetworkSync({ engine: engine as never, node: 'h1', logger: pino({ level: 'silent' }), removeEndpoint: async (_n, e) => void removed.push(e), mirrorNetworks: false, staleAfterMs: 60_000, now: () => Date.parse('2026-01-01T00:10:00Z') });
  await sync.run(() => v);
  t.deepEqual(removed, ['gone0-docker'], 'only the endpoint no running container refers to');
});

test('stale Docker endpoints: an exited container still naming its endpoint (dockerd dropped it during a power-off) does not keep it', async (t) => {
  const { DockerNetworkSync } = await import('../src/docker/network-sync.ts');
  const { pino } = await import('pino');
  const D = 'd'.repeat(64);
  const n = { ...net(N1, '10.1.0.0/24', '10.1.0.1', 300), docker: { networks: { h1: D } } };
  const e = ep('old', N1, 'h1', '10.1.0.4', { docker: { networkId: D, endpointId: 'old-docker' }, handoff: 'kvdold', createdAt: '2026-01-01T00:00:00Z' });
  const v: ClusterView = { networks: new Map([[N1, n]]), endpoints: new Map([[N1, new Map<string, EndpointRecord>([['old', e]])]]), nodes: new Map() };
  const engine = {
    listNetworks: async () => [{ Id: D, Name: n.name, Driver: 'kvnet', Scope: 'local' }],
    inspectNetwork: async () => ({ Id: D, Name: n.name, Driver: 'kvnet', Scope: 'local', Containers: {} }),
    listContainers: async () => [{ Id: 'c1', Names: ['/c1'], State: 'exited', NetworkSettings: { Networks: { [n.name]: { NetworkID: D, EndpointID: 'old-docker' } } } }],
    createNetwork: async () => 'x',
    removeNetwork: async () => undefined,
  };
  const removed: string[] = [];
  const sync = new DockerNetworkSync({ engine: engine as never, node: 'h1', logger: pino({ level: 'silent' }), removeEndpoint: async (_n, x) => void removed.push(x), staleAfterMs: 60_000, now: () => Date.parse('2026-01-01T00:10:00Z') });
  await sync.run(() => v);
  t.deepEqual(removed, ['old-docker']);
});

test('after a power loss the restarted container\'s new endpoint gets the name its stale endpoint held, in one pass; a refused name is tried again once free', async (t) => {
  const { DockerNetworkSync } = await import('../src/docker/network-sync.ts');
  const { pino } = await import('pino');
  const D = 'd'.repeat(64);
  const n = { ...net(N1, '10.1.0.0/24', '10.1.0.1', 300), docker: { networks: { h1: D } } };
  const newId = 'n'.repeat(64);
  const stale = ep('old', N1, 'h1', '10.1.0.4', { name: 'w1', docker: { networkId: D, endpointId: 'old-docker' }, handoff: 'kvdold', createdAt: '2026-01-01T00:00:00Z' });
  const fresh = ep('new', N1, 'h1', '10.1.0.5', { name: newId.slice(0, 12), docker: { networkId: D, endpointId: newId }, handoff: 'kvdnew', createdAt: '2026-01-01T00:09:59Z' });
  const endpoints = new Map<string, EndpointRecord>([['old', stale], ['new', fresh]]);
  const v = (): ClusterView => ({ networks: new Map([[N1, n]]), endpoints: new Map([[N1, endpoints]]), nodes: new Map() });
  const engine = {
    listNetworks: async () => [{ Id: D, Name: n.name, Driver: 'kvnet', Scope: 'local' }],
    inspectNetwork: async () => undefined,
    listContainers: async () => [{ Id: 'c1', Names: ['/w1'], State: 'running', NetworkSettings: { Networks: { [n.name]: { NetworkID: D, EndpointID: newId } } } }],
    createNetwork: async () => 'x',
    removeNetwork: async () => undefined,
  };
  const events: string[] = [];
  const sync = new DockerNetworkSync({
    engine: engine as never,
    node: 'h1',
    logger: pino({ level: 'silent' }),
    staleAfterMs: 60_000,
    now: () => Date.parse('2026-01-01T00:10:00Z'),
    removeEndpoint: async (_n, x) => {
      events.push(`removed ${x}`);
      endpoints.delete('old');
    },
    nameEndpoint: async (_nid, eid, name) => {
      if ([...endpoints.values()].some((e) => e.name === name)) throw new Error(`endpoint with name ${name} already exists`);
      events.push(`named ${eid} ${name}`);
    },
  });
  await sync.run(v);
  t.deepEqual(events, ['removed old-docker', 'named new w1'], 'the stale endpoint is removed before the new one is named');

  // a name refused (held by a live endpoint elsewhere) is not retried while taken, and is once it is free
  const other = ep('x', N1, 'h2', '10.1.0.6', { name: 'w1' });
  endpoints.set('x', other);
  endpoints.set('new', { ...fresh });
  events.length = 0;
  await sync.run(v);
  await sync.run(v);
  t.deepEqual(events, [], 'w1 is taken on h2: nothing');
  endpoints.delete('x');
  await sync.run(v);
  t.deepEqual(events, ['named new w1'], 'tried again once w1 is free');
});
