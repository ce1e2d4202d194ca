import test from 'ava';
import { assignEgress, defaultIfname } from '../src/egress.ts';
import type { EndpointRecord, NetworkRecord } from '../src/layout.ts';

const bridge = { subnet: '172.18.0.0/16', gateway: '172.18.0.1' };
const net = (id: string, internal = false): NetworkRecord => ({
  id, name: id, vni: 300, poolId: 'p', subnet: '10.0.0.0/24', gateway: '10.0.0.1', auxAddresses: {}, internal, labels: {}, options: {}, createdAt: '', createdBy: 'h1',
});
const ep = (id: string, network: string, netns: string, createdAt: string): EndpointRecord => ({
  id, name: id, network, node: 'h1', nodeId: 'x', address: '10.0.0.2/24', ip: '10.0.0.2', mac: '02:42:0a:00:00:02', netns, ifname: 'eth0', createdAt,
});
const networks = new Map([['n1', net('n1')], ['n2', net('n2')], ['int', net('int', true)]]);

test('one egress per sandbox, for its oldest endpoint on a non-internal network', (t) => {
  const r = assignEgress(
    [ep('b', 'n2', '/run/netns/c1', '2026-01-02'), ep('a', 'n1', '/run/netns/c1', '2026-01-01'), ep('c', 'int', '/run/netns/c2', '2026-01-01'), ep('d', 'n1', '/run/netns/c3', '2026-01-03')],
    networks, bridge, new Map(),
  );
  t.deepEqual([...r.egress.entries()], [['a', '172.18.0.2/16'], ['d', '172.18.0.3/16']]);
  t.deepEqual(r.unassigned, []);
});

test('existing assignments are kept (also when a newer endpoint holds the sandbox\'s egress)', (t) => {
  const r = assignEgress(
    [ep('a', 'n1', '/run/netns/c1', '2026-01-01'), ep('b', 'n2', '/run/netns/c1', '2026-01-02'), ep('d', 'n1', '/run/netns/c3', '2026-01-03')],
    networks, bridge, new Map([['b', '172.18.0.9/16'], ['gone', '172.18.0.2/16']]),
  );
  t.deepEqual([...r.egress.entries()].sort(), [['b', '172.18.0.9/16'], ['d', '172.18.0.2/16']]);
});

test('an address from another bridge subnet (the bridge was re-made elsewhere) is replaced', (t) => {
  const r = assignEgress([ep('a', 'n1', '/x1', '1')], networks, { subnet: '172.19.0.0/16', gateway: '172.19.0.1' }, new Map([['a', '172.18.0.2/16']]));
  t.deepEqual([...r.egress.entries()], [['a', '172.19.0.2/16']]);
});

test('a full bridge subnet leaves endpoints without egress, reported', (t) => {
  const r = assignEgress([ep('a', 'n1', '/x1', '1'), ep('b', 'n1', '/x2', '2')], networks, { subnet: '10.9.0.0/30', gateway: '10.9.0.1' }, new Map());
  t.deepEqual([...r.egress.entries()], [['a', '10.9.0.2/30']]);
  t.deepEqual(r.unassigned, ['b']);
});

test('default interface names skip taken ones and the egress name', (t) => {
  t.is(defaultIfname(new Set(), 'eth1'), 'eth0');
  t.is(defaultIfname(new Set(['eth0']), 'eth1'), 'eth2');
  t.is(defaultIfname(new Set(['eth0']), undefined), 'eth1');
  t.is(defaultIfname(new Set(['eth0', 'eth2']), 'eth1'), 'eth3');
});
