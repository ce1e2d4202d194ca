/**
 * Pure logic of issue 15 in the agent: which pools a new network asks for (families, per-subnet
 * gateways, ranges and aux addresses), which MTU it gets and why one is refused, the data plane's
 * desired state of dual-stack and IPv6-only networks, IPv6 egress addresses, the per-host MTU
 * warnings, and the cluster's VXLAN port rule. No kernel, no store.
 */

import test from 'ava';
import { pino } from 'pino';
import type { UnderlayInfo } from '@kvnet/dataplane';
import { buildClusterView, type ClusterView } from '../src/cluster-view.ts';
import { checkVxlanPort } from '../src/cluster-settings.ts';
import { computeDesiredState } from '../src/desired-state.ts';
import { assignEgress6, egressIpv6For } from '../src/egress.ts';
import { encodeRecord, endpointAddresses, keys, networkPools, type EndpointRecord, type NetworkRecord, type NodeRecord } from '../src/layout.ts';
import { AgentMetrics } from '../src/metrics.ts';
import { chooseNetworkMtu, defaultMtuProblem, defaultNetworkMtu, MtuWarningLog, networkMtuWarning, type DatapathSettings } from '../src/network-mtu.ts';
import { planNetworkPools } from '../src/network-pools.ts';
import { newEndpointRecord } from '../src/records.ts';
import { invalidInputMessage } from './fixtures/invalid-input.ts';

const nid = 'a'.repeat(64);
const eid = (c: string): string => c.repeat(64);
const underlay1400: UnderlayInfo = { ifname: 'eth0', mtu: 1400, address: '198.18.0.1', family: 4, overlayMtu: 1350 };
const datapath1400: DatapathSettings = { vxlanPort: 4789, underlay: underlay1400, defaultMtu: 1350 };

const message = invalidInputMessage;

test('pools: no subnet is one default IPv4 pool; --ipv6 adds a default IPv6 one; only IPv6 subnets make an IPv6-only network', (t) => {
  t.deepEqual(planNetworkPools({}), { v4: {} });
  t.deepEqual(planNetworkPools({ ipv6: true }), { v4: {}, v6: {} });
  t.deepEqual(planNetworkPools({ subnet: '10.20.0.0/24', ipv6: true }), { v4: { subnet: '10.20.0.0/24' }, v6: {} });
  t.deepEqual(planNetworkPools({ subnet: 'fd00:20::/64' }), { v6: { subnet: 'fd00:20::/64' } });
  t.deepEqual(planNetworkPools({ subnet: 'fd00:20::/64', ipv4: true }), { v4: {}, v6: { subnet: 'fd00:20::/64' } });
  t.deepEqual(planNetworkPools({ ipv6: true, ipv4: false }), { v6: {} });
});

test('pools: gateways, ranges and aux addresses go to the subnet that holds them', (t) => {
  const plan = planNetworkPools({
    subnet: ['10.20.0.0/24', 'fd00:20::/64'],
    gateway: ['fd00:20::fe', '10.20.0.254'],
    ipRange: ['10.20.0.128/25', 'fd00:20::100/120'],
    auxAddresses: { r4: '10.20.0.5', r6: 'fd00:20::5' },
  });
  t.deepEqual(plan, {
    v4: { subnet: '10.20.0.0/24', gateway: '10.20.0.254', ipRange: '10.20.0.128/25', auxAddresses: { r4: '10.20.0.5' } },
    v6: { subnet: 'fd00:20::/64', gateway: 'fd00:20::fe', ipRange: 'fd00:20::100/120', auxAddresses: { r6: 'fd00:20::5' } },
  });
});

test('pools: bad input names the field and the value', (t) => {
  t.is(message(() => planNetworkPools({ subnet: ['10.20.0.0/24', '10.21.0.0/24'] })), 'invalid subnet "10.21.0.0/24": the network already has IPv4 subnet 10.20.0.0/24; a kvnet network has at most one IPv4 and one IPv6 subnet');
  t.is(message(() => planNetworkPools({ subnet: 'fd00:20::/64', gateway: 'fd00:21::1' })), 'invalid gateway "fd00:21::1": is not inside any subnet of the network (fd00:20::/64)');
  t.is(message(() => planNetworkPools({ subnet: '10.20.0.0/24', gateway: 'fd00:20::1' })), 'invalid gateway "fd00:20::1": is not inside any subnet of the network (10.20.0.0/24)');
  t.is(message(() => planNetworkPools({ gateway: '10.20.0.1' })), 'invalid gateway "10.20.0.1": needs a subnet (--subnet) to lie in');
  t.is(message(() => planNetworkPools({ subnet: ['10.20.0.0/24'], gateway: ['10.20.0.1', '10.20.0.2'] })), 'invalid gateway "10.20.0.2": subnet 10.20.0.0/24 already has gateway 10.20.0.1');
  t.is(message(() => planNetworkPools({ subnet: 'fd00:20::/64', ipv6: false })), 'invalid subnet "fd00:20::/64": is IPv6, but ipv6 is false');
  t.is(message(() => planNetworkPools({ subnet: '10.20.0.0/24', ipv4: false })), 'invalid subnet "10.20.0.0/24": is IPv4, but ipv4 is false');
  t.regex(message(() => planNetworkPools({ ipv4: false })), /^invalid ipv4 false: a network needs IPv4 or IPv6/);
  t.regex(message(() => planNetworkPools({ subnet: '10.20.0.0/24', auxAddresses: { r: 'fd00::1' } })), /^invalid auxAddresses\.r "fd00::1": is not inside any subnet/);
});

test('MTU: the request, the Docker option, or the default; each refusal says why', (t) => {
  t.is(chooseNetworkMtu({ hasIpv6: false }, datapath1400), 1350, 'default: underlay 1400 − 50');
  t.is(chooseNetworkMtu({ mtu: 1300, hasIpv6: false }, datapath1400), 1300);
  t.is(chooseNetworkMtu({ options: { 'com.docker.network.driver.mtu': '1280' }, hasIpv6: true }, datapath1400), 1280);
  t.is(chooseNetworkMtu({ mtu: 1300, options: { 'com.docker.network.driver.mtu': '1300' }, hasIpv6: false }, datapath1400), 1300);
  t.is(message(() => chooseNetworkMtu({ mtu: 1351, hasIpv6: false }, datapath1400)), 'invalid mtu 1351: is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4)');
  t.is(message(() => chooseNetworkMtu({ mtu: 1279, hasIpv6: true }, datapath1400)), 'invalid mtu 1279: is below 1280, the minimum for a network with an IPv6 subnet');
  t.is(message(() => chooseNetworkMtu({ mtu: 60, hasIpv6: false }, datapath1400)), 'invalid mtu 60: is below 68, the IPv4 minimum');
  t.is(message(() => chooseNetworkMtu({ options: { 'com.docker.network.driver.mtu': 'big' }, hasIpv6: false }, datapath1400)), 'invalid option com.docker.network.driver.mtu "big": is not an integer MTU');
  t.regex(message(() => chooseNetworkMtu({ options: { 'com.docker.network.driver.mtu': '9000' }, hasIpv6: false }, datapath1400)), /^invalid option com\.docker\.network\.driver\.mtu "9000": is above 1350/);
  t.regex(message(() => chooseNetworkMtu({ mtu: 1300, options: { 'com.docker.network.driver.mtu': '1200' }, hasIpv6: false }, datapath1400)), /option com\.docker\.network\.driver\.mtu says 1200/);
  t.regex(message(() => chooseNetworkMtu({ hasIpv6: true }, { ...datapath1400, defaultMtu: 1200 })), /^invalid default mtu 1200: is below 1280/);
  // an IPv6 underlay costs 70 bytes
  const u6: UnderlayInfo = { ifname: 'eth0', mtu: 1400, address: '2001:2::1', family: 6, overlayMtu: 1330 };
  t.is(defaultNetworkMtu(undefined, u6), 1330);
  t.is(defaultNetworkMtu(1200, u6), 1200, '--default-mtu wins');
  t.is(defaultNetworkMtu(undefined, undefined), 1450, 'unknown underlay: Ethernet');
  t.is(defaultMtuProblem(1400, underlay1400), 'invalid --default-mtu 1400: is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4)');
  t.is(defaultMtuProblem(1350, underlay1400), undefined);
});

function net(over: Partial<NetworkRecord> = {}): NetworkRecord {
  return {
    id: nid, name: 'dual', vni: 4200, poolId: 'p4', subnet: '10.20.0.0/24', gateway: '10.20.0.1', auxAddresses: {}, internal: false,
    labels: {}, options: {}, createdAt: '', createdBy: 'h1', ...over,
  };
}
const dual = (over: Partial<NetworkRecord> = {}): NetworkRecord => net({ poolId6: 'p6', subnet6: 'fd00:20::/64', gateway6: 'fd00:20::1', auxAddresses6: {}, mtu: 1350, ...over });
const v6only = (over: Partial<NetworkRecord> = {}): NetworkRecord =>
  net({ name: 'six', poolId: 'p6', subnet: 'fd00:21::/64', gateway: 'fd00:21::1', poolId6: 'p6', subnet6: 'fd00:21::/64', gateway6: 'fd00:21::1', auxAddresses6: {}, mtu: 1350, ...over });

function view(networks: NetworkRecord[], endpoints: EndpointRecord[], nodes: NodeRecord[] = []): ClusterView {
  const entry = (key: string, v: unknown) => ({ key, value: encodeRecord(v), revision: '1' });
  return buildClusterView({
    networks: networks.map((n) => entry(keys.network(n.id), n)),
    endpoints: endpoints.map((e) => entry(keys.endpoint(e.network, e.id), e)),
    nodes: nodes.map((n) => entry(keys.node(n.name), n)),
  });
}
const node = (name: string, advertise: string): NodeRecord => ({ name, advertise, advertiseAddr: advertise, version: '0', startedAt: '', nodeId: `id-${name}` });
const endpoint = (id: string, nodeName: string, address: string, address6?: string, over: Partial<EndpointRecord> = {}): EndpointRecord =>
  newEndpointRecord({ name: nodeName, id: `id-${nodeName}`, vtep: '198.18.0.9' }, {
    id, name: id.slice(0, 4), network: nid, address, ip: address.split('/')[0]!, ...(address6 ? { address6, ip6: address6.split('/')[0]! } : {}), netns: `/run/netns/${id.slice(0, 3)}`, ifname: 'eth0', ...over,
  });

test('records: pools and addresses by family; the MAC follows the IPv4 address, else a hash of the IPv6 one', (t) => {
  t.deepEqual(networkPools(dual()).map((p) => [p.family, p.poolId, p.subnet, p.gateway]), [[4, 'p4', '10.20.0.0/24', '10.20.0.1'], [6, 'p6', 'fd00:20::/64', 'fd00:20::1']]);
  t.deepEqual(networkPools(v6only()).map((p) => [p.family, p.poolId]), [[6, 'p6']], 'an IPv6-only network has one pool');
  t.deepEqual(networkPools(net()).map((p) => p.family), [4], 'an old record: IPv4 only');
  const d = endpoint(eid('1'), 'h1', '10.20.0.2/24', 'fd00:20::2/64');
  t.is(d.mac, '02:42:0a:14:00:02');
  t.deepEqual(endpointAddresses(d), { v4: '10.20.0.2/24', v6: 'fd00:20::2/64' });
  const six = endpoint(eid('2'), 'h1', 'fd00:21::2/64', 'fd00:21::2/64');
  t.regex(six.mac, /^06(:[0-9a-f]{2}){5}$/);
  t.deepEqual(endpointAddresses(six), { v6: 'fd00:21::2/64' });
  t.deepEqual(endpointAddresses({ address: 'fd00:21::3/64' }), { v6: 'fd00:21::3/64' }, 'an IPv6-only record without address6 still reads as IPv6');
});

test('desired state: both subnets, both addresses, IPv6 peers with NDP, the recorded MTU; IPv6-only networks too', (t) => {
  const local = endpoint(eid('1'), 'h1', '10.20.0.2/24', 'fd00:20::2/64');
  const remote = endpoint(eid('2'), 'h2', '10.20.0.3/24', 'fd00:20::3/64');
  const local6 = endpoint(eid('3'), 'h1', 'fd00:21::2/64', 'fd00:21::2/64', { network: 'b'.repeat(64) });
  const remote6 = endpoint(eid('4'), 'h2', 'fd00:21::3/64', 'fd00:21::3/64', { network: 'b'.repeat(64) });
  const v = view([dual(), v6only({ id: 'b'.repeat(64) })], [local, remote, local6, remote6], [node('h1', '198.18.0.1'), node('h2', '198.18.0.2')]);
  const r = computeDesiredState({ view: v, node: 'h1', egress: new Map([[local.id, '172.18.0.2/16']]), egress6: new Map([[local.id, 'fd6b:766e:6777::2/64']]) });
  const [d, six] = r.state.networks;
  t.deepEqual(d!.subnets, [{ cidr: '10.20.0.0/24', gateway: '10.20.0.1' }, { cidr: 'fd00:20::/64', gateway: 'fd00:20::1' }]);
  t.is(d!.mtu, 1350);
  t.deepEqual(d!.endpoints, [{
    id: local.id, address: '10.20.0.2/24', addressIPv6: 'fd00:20::2/64', mac: '02:42:0a:14:00:02',
    sandbox: { path: local.netns!, ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16', addressIPv6: 'fd6b:766e:6777::2/64' } },
  }]);
  t.deepEqual(d!.peers, [{ ip: '10.20.0.3', ipv6: 'fd00:20::3', mac: '02:42:0a:14:00:03', vtep: '198.18.0.2' }]);
  t.deepEqual(six!.subnets, [{ cidr: 'fd00:21::/64', gateway: 'fd00:21::1' }]);
  t.deepEqual(six!.endpoints.map((e) => [e.address, e.addressIPv6]), [[undefined, 'fd00:21::2/64']]);
  t.deepEqual(six!.peers, [{ ipv6: 'fd00:21::3', mac: remote6.mac, vtep: '198.18.0.2' }]);
  // an old record (no mtu) leaves the MTU to the host's default
  const old = computeDesiredState({ view: view([net()], [endpoint(eid('5'), 'h1', '10.20.0.5/24')]), node: 'h1', egress: new Map() });
  t.false('mtu' in old.state.networks[0]!);
});

test('IPv6 egress: the IPv4 egress host number in the bridge /64, only for sandboxes with IPv6 on a non-internal network', (t) => {
  const bridge = { subnet: '172.18.0.0/16', gateway: '172.18.0.1', subnet6: 'fd6b:766e:6777::/64', gateway6: 'fd6b:766e:6777::1' };
  t.is(egressIpv6For('172.18.0.5/16', bridge), 'fd6b:766e:6777::5/64');
  t.is(egressIpv6For('172.18.1.2/16', bridge), 'fd6b:766e:6777::102/64');
  t.is(egressIpv6For('172.18.0.5/16', { subnet: '172.18.0.0/16' }), undefined, 'no IPv6 on the bridge');
  t.is(egressIpv6For('172.18.0.1/16', bridge), undefined, "never the bridge's own IPv6 address (a bridge whose IPv4 gateway is not .1)");
  const withV6 = endpoint(eid('1'), 'h1', '10.20.0.2/24', 'fd00:20::2/64');
  const v4only = endpoint(eid('2'), 'h1', '10.30.0.2/24', undefined, { network: 'c'.repeat(64), netns: '/run/netns/other' });
  const networks = new Map([[nid, dual()], ['c'.repeat(64), net({ id: 'c'.repeat(64), subnet: '10.30.0.0/24', gateway: '10.30.0.1' })]]);
  const egress = new Map([[withV6.id, '172.18.0.2/16'], [v4only.id, '172.18.0.3/16']]);
  t.deepEqual(assignEgress6(egress, [withV6, v4only], networks, bridge), new Map([[withV6.id, 'fd6b:766e:6777::2/64']]));
  t.deepEqual(assignEgress6(egress, [withV6, v4only], new Map([[nid, dual({ internal: true })], ['c'.repeat(64), networks.get('c'.repeat(64))!]]), bridge), new Map(), 'IPv6 only on an internal network: no IPv6 way out');
});

test('MTU warnings: a network larger than this underlay is reported once, at start or when it appears, and counted', async (t) => {
  t.is(networkMtuWarning(dual({ mtu: 1350 }), underlay1400), undefined);
  t.is(networkMtuWarning(dual({ mtu: 1450 }), undefined), undefined, 'nothing known, nothing said');
  const w = networkMtuWarning(dual({ mtu: 1450 }), underlay1400)!;
  t.like(w, { network: nid, name: 'dual', code: 'KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY', mtu: 1450, limit: 1350 });
  t.is(w.message, 'network dual: MTU 1450 is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4); packets larger than 1350 bytes between this host and the others are dropped: raise eth0\'s MTU to at least 1500, or recreate the network with --mtu 1350 or less');
  const lines: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => void lines.push(s) });
  const metrics = new AgentMetrics();
  const log = new MtuWarningLog(underlay1400, metrics, logger);
  const big = dual({ mtu: 1450 });
  t.deepEqual(log.update(view([], [])), []);
  t.is(log.update(view([big], [])).length, 1);
  log.update(view([big], []));
  log.update(view([big], []));
  t.is(lines.filter((l) => l.includes('network dual: MTU 1450')).length, 1, 'logged once, not per reconcile');
  const text = await metrics.registry.metrics();
  t.regex(text, /kvnet_networks_over_underlay_mtu 1/);
  t.regex(text, /kvnet_network_warnings_total\{code="KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY"\} 1/);
  log.update(view([], []));
  t.regex(await metrics.registry.metrics(), /kvnet_networks_over_underlay_mtu 0/);
  log.update(view([big], []));
  t.is(lines.filter((l) => l.includes('network dual: MTU 1450')).length, 2, 'a network that comes back is reported again');
});

test('VXLAN port: the recorded port wins; a different flag is refused naming both values', (t) => {
  const recorded = { port: 4790, setBy: 'h1', setAt: '2026-12-01T00:00:00.000Z' };
  t.is(checkVxlanPort(recorded, undefined), 4790);
  t.is(checkVxlanPort(recorded, 4790), 4790);
  const err = t.throws(() => checkVxlanPort(recorded, 4789))!;
  t.is((err as { code?: string }).code, 'KVNET_CLUSTER_SETTING_MISMATCH');
  t.regex(err.message, /^--vxlan-port 4789 does not match the cluster's VXLAN port 4790 \(recorded in the store at cluster\/vxlan-port by h1 at 2026-12-01T00:00:00\.000Z\)/);
});
