// Pure parts of the CNI face: which host routes it wants, how it changes the kernel's, and how it reads
// a sandbox (iproute2's JSON as printed by iproute2 6.1 here).
import test from 'ava';
import type { ClusterView } from '../src/cluster-view.ts';
import { desiredHostRoutes, parseHostRoutes, planHostRoutes } from '../src/cni/host-routes.ts';
import { parseSandbox } from '../src/cni/sandbox.ts';
import type { EndpointRecord, NetworkRecord } from '../src/layout.ts';

const net = (id: string, internal = false): NetworkRecord => ({ id, name: id, vni: 300, poolId: 'p', subnet: '10.0.1.0/24', gateway: '10.0.1.1', auxAddresses: {}, internal, labels: {}, options: {}, createdAt: '', createdBy: 'h1' });
const ep = (id: string, network: string, node: string, ip: string, cni: boolean): EndpointRecord => ({
  id, name: id, network, node, nodeId: 'x', address: `${ip}/24`, ip, mac: '02:42:00:00:00:01', netns: `/run/netns/${id}`, ifname: 'eth0', createdAt: '',
  ...(cni ? { cni: { containerId: `c-${id}`, ifname: 'eth0', netconf: 'multi' } } : {}),
});

test('routes are wanted for this node\'s CNI endpoints with a gateway bridge address, on non-internal networks only', (t) => {
  const view: ClusterView = {
    networks: new Map([['n1', net('n1')], ['n2', net('n2', true)]]),
    endpoints: new Map([
      ['n1', new Map([['a', ep('a', 'n1', 'h1', '10.0.1.2', true)], ['b', ep('b', 'n1', 'h1', '10.0.1.3', false)], ['c', ep('c', 'n1', 'h2', '10.0.1.4', true)], ['d', ep('d', 'n1', 'h1', '10.0.1.5', true)]])],
      ['n2', new Map([['e', ep('e', 'n2', 'h1', '10.0.2.2', true)]])],
    ]),
    nodes: new Map(),
  };
  const egress = new Map([['a', '172.18.0.2/16'], ['b', '172.18.0.3/16'], ['e', '172.18.0.4/16']]);
  t.deepEqual(desiredHostRoutes(view, 'h1', (eid) => (egress.has(eid) ? { address: egress.get(eid)! } : undefined)), [{ dst: '10.0.1.2/32', via: '172.18.0.2' }]);
});

test('missing routes are added at once; unwanted ones go only when the previous plan found them unwanted too', (t) => {
  const a = { dst: '10.0.1.2/32', via: '172.18.0.2' };
  const b = { dst: '10.0.1.3/32', via: '172.18.0.3' };
  const first = planHostRoutes([a], [b], new Set());
  t.deepEqual(first.add, [a]);
  t.deepEqual(first.remove, []);
  t.deepEqual([...first.suspects], ['10.0.1.3/32 via 172.18.0.3']);
  const second = planHostRoutes([a], [a, b], first.suspects);
  t.deepEqual(second.add, []);
  t.deepEqual(second.remove, [b]);
  t.is(second.suspects.size, 0);
  // wanted again in between: kept, and no longer a suspect
  t.deepEqual(planHostRoutes([a, b], [a, b], first.suspects), { add: [], remove: [], suspects: new Set() });
});

test('iproute2 JSON: host routes and a sandbox\'s interfaces and routes', (t) => {
  t.deepEqual(parseHostRoutes('[{"dst":"10.0.1.2","gateway":"172.18.0.2","dev":"kvnet_gwbridge","protocol":"107","flags":[]}]'), [{ dst: '10.0.1.2/32', via: '172.18.0.2' }]);
  const addr =
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},{"family":"inet6","local":"::1","prefixlen":128}]},' +
    '{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST"],"mtu":1450,"address":"02:42:0A:00:01:02","addr_info":[{"family":"inet","local":"10.0.1.2","prefixlen":24}]}]';
  const route = '[{"dst":"default","gateway":"172.18.0.1","dev":"eth1","flags":[]},{"dst":"10.0.1.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.0.1.2","flags":[]}]';
  t.deepEqual(parseSandbox(addr, route), {
    interfaces: [
      { name: 'lo', mac: '00:00:00:00:00:00', mtu: 65536, up: true, addresses: ['127.0.0.1/8'] },
      { name: 'eth0', mac: '02:42:0a:00:01:02', mtu: 1450, up: false, addresses: ['10.0.1.2/24'] },
    ],
    routes: [{ dst: '0.0.0.0/0', gateway: '172.18.0.1', dev: 'eth1' }, { dst: '10.0.1.0/24', dev: 'eth0' }],
  });
});
