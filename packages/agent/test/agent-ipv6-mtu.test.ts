/**
 * Issue 15 through the real agent in this process (test/support/test-agent.ts: the production
 * composition root on a real embedded store with the real IPAM; a recording data plane that reports an
 * underlay MTU instead of touching the kernel): the cluster's VXLAN port recorded by the first agent
 * and a disagreeing agent refused at start; network MTUs chosen, refused and reported; IPv6 and
 * dual-stack networks through the network service and through Docker's plugin protocol (IPv6 pools
 * under their own PoolID, both addresses owned by the endpoint, adoption on a second host); bad input
 * that stores nothing. Datapath proof (pings, NDP/FDB entries, real MTUs) is in
 * test/cluster/ipv6-mtu.test.ts and test/docker/docker-ipv6-mtu.test.ts.
 */

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type KVStore } from '@kvnet/store';
import { RecordingDataplane, startTestAgent, type TestAgent } from '../../../test/support/test-agent.ts';
import { computeDesiredState } from '../src/desired-state.ts';
import type { DockerEndpointRecord, DockerNetworkRecord } from '../src/docker/backend.ts';
import { dispatchPluginCall } from '../src/docker/protocol.ts';
import { decodeRecord, keys, type VxlanPortRecord } from '../src/layout.ts';

const DOCKER_NET = 'a'.repeat(64);
const DOCKER_EP = 'b'.repeat(64);

interface Setup {
  store: KVStore;
  storeUrl: string;
  dir: string;
}

async function freshStore(t: { teardown: (fn: () => Promise<void> | void) => void }): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-v6-'));
  const storeUrl = `local://${dir}/store.db`;
  const store = await openStore(storeUrl);
  t.teardown(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { store, storeUrl, dir };
}

async function agent(t: { teardown: (fn: () => Promise<void> | void) => void }, storeUrl: string, node: string, underlayMtu: number, more: { vxlanPort?: number; defaultMtu?: number } = {}): Promise<TestAgent> {
  const a = await startTestAgent({ storeUrl, node, vtep: `198.18.0.${node.slice(1)}`, dataplane: new RecordingDataplane(underlayMtu), docker: {}, ...more });
  t.teardown(() => a.stop());
  return a;
}

const plugin = (a: TestAgent) => async (m: string, body?: unknown) => (await dispatchPluginCall(m, body === undefined ? '' : JSON.stringify(body) + '\n', a.docker.driver)).body;

/** Every key under a prefix, for "nothing stored" checks. */
async function keysUnder(store: KVStore, prefix: string): Promise<string[]> {
  return (await store.list(prefix)).entries.map((e) => e.key);
}

test('the first agent records the VXLAN port; later agents use it, and one with another --vxlan-port refuses to start naming both', async (t) => {
  const { store, storeUrl } = await freshStore(t);
  const h1 = await agent(t, storeUrl, 'h1', 1500, { vxlanPort: 4790 });
  const entry = (await store.get(keys.vxlanPort()))!;
  t.like(decodeRecord<VxlanPortRecord>(entry.value, entry.key), { port: 4790, setBy: 'h1' });
  t.like(h1.agent.status(), { vxlanPort: 4790 });
  const h2 = await agent(t, storeUrl, 'h2', 1500);
  t.like(h2.agent.status(), { vxlanPort: 4790 }, 'without the flag an agent takes the recorded port');
  const err = await t.throwsAsync(startTestAgent({ storeUrl, node: 'h3', vtep: '198.18.0.3', vxlanPort: 4789 }));
  t.is((err as { code?: string }).code, 'KVNET_CLUSTER_SETTING_MISMATCH');
  t.regex(err!.message, /^--vxlan-port 4789 does not match the cluster's VXLAN port 4790 \(recorded in the store at cluster\/vxlan-port by h1 at /);
  t.regex(err!.message, /start this agent with --vxlan-port 4790, or without --vxlan-port$/);
  t.is((await store.get(keys.node('h3'))), undefined, 'the refused agent did not register');
});

test('--default-mtu above what the underlay carries is refused at start', async (t) => {
  const { storeUrl } = await freshStore(t);
  const err = await t.throwsAsync(startTestAgent({ storeUrl, node: 'h1', vtep: '198.18.0.1', dataplane: new RecordingDataplane(1400), defaultMtu: 1400 }));
  t.is(err!.message, 'invalid --default-mtu 1400: is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4)');
});

test('network MTU: the underlay default, --mtu, refusals that store nothing, and a host whose underlay is too small reports the network', async (t) => {
  const { store, storeUrl } = await freshStore(t);
  const h1 = await agent(t, storeUrl, 'h1', 1500);
  const h2 = await agent(t, storeUrl, 'h2', 1400);
  t.like(h2.agent.status(), { underlay: { ifname: 'eth0', mtu: 1400, overlayMtu: 1350 }, defaultMtu: 1350, networkWarnings: [] });
  // h2 creates with its own underlay's default, h1 with its own
  t.is((await h2.ctx.networks.createNetwork({ name: 'small', subnet: '10.40.1.0/24' })).mtu, 1350);
  const big = await h1.ctx.networks.createNetwork({ name: 'big', subnet: '10.40.2.0/24' });
  t.is(big.mtu, 1450);
  t.is((await h1.ctx.networks.createNetwork({ name: 'set', subnet: '10.40.3.0/24', mtu: 1300 })).mtu, 1300);

  // refusals name value and reason, and leave no network, pool or VNI behind
  const before = { nets: await keysUnder(store, 'networks'), pools: await keysUnder(store, 'ipam/pool-table/pools'), vnis: await keysUnder(store, 'ipam/vni/ids') };
  await t.throwsAsync(h2.ctx.networks.createNetwork({ name: 'toobig', subnet: '10.40.4.0/24', mtu: 1400 }), { message: 'invalid mtu 1400: is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4)' });
  await t.throwsAsync(h2.ctx.networks.createNetwork({ name: 'tiny6', subnet: ['10.40.5.0/24', 'fd00:40:5::/64'], mtu: 1200 }), { message: 'invalid mtu 1200: is below 1280, the minimum for a network with an IPv6 subnet' });
  await t.throwsAsync(h2.ctx.networks.createNetwork({ name: 'opt', options: { 'com.docker.network.driver.mtu': '1x' } }), { message: 'invalid option com.docker.network.driver.mtu "1x": is not an integer MTU' });
  t.deepEqual({ nets: await keysUnder(store, 'networks'), pools: await keysUnder(store, 'ipam/pool-table/pools'), vnis: await keysUnder(store, 'ipam/vni/ids') }, before);

  // h2 cannot carry `big`: status, inspect and the metric say so
  await h2.ctx.cluster.waitForView(keys.network(big.id), true);
  await h2.ctx.reconciler.reconcileNow();
  const warnings = h2.agent.status().networkWarnings as Array<{ name: string; mtu: number; limit: number; code: string }>;
  t.deepEqual(warnings.map((w) => [w.name, w.mtu, w.limit, w.code]), [['big', 1450, 1350, 'KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY']]);
  t.regex((await h2.ctx.networks.inspectNetwork('big')).warnings?.[0] ?? '', /^network big: MTU 1450 is above 1350, what underlay eth0 carries/);
  t.is((await h1.ctx.networks.inspectNetwork('big')).warnings, undefined, 'h1 carries it');
  t.regex(await h2.agent.metrics.registry.metrics(), /kvnet_networks_over_underlay_mtu 1/);
  t.regex(await h1.agent.metrics.registry.metrics(), /kvnet_networks_over_underlay_mtu 0/);
});

test('dual-stack and IPv6-only networks through the network service; bad IPv6 input stores nothing', async (t) => {
  const { store, storeUrl } = await freshStore(t);
  const h1 = await agent(t, storeUrl, 'h1', 1500);
  const dual = await h1.ctx.networks.createNetwork({ name: 'dual', subnet: ['10.41.0.0/24', 'fd00:41::/64'], gateway: 'fd00:41::fe' });
  t.like(dual, { subnet: '10.41.0.0/24', gateway: '10.41.0.1', subnet6: 'fd00:41::/64', gateway6: 'fd00:41::fe', mtu: 1450 });
  const rec = h1.ctx.cluster.view().networks.get(dual.id)!;
  t.not(rec.poolId6, rec.poolId);
  t.is((await h1.ctx.ipam.getPool(rec.poolId6!))?.owner, dual.id, 'both pools are owned by the network');
  const auto = await h1.ctx.networks.createNetwork({ name: 'auto', ipv6: true });
  t.regex(auto.subnet, /^10\.\d+\.\d+\.0\/24$/);
  t.regex(auto.subnet6 ?? '', /^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}:(?:[0-9a-f]{1,4}:)?:\/64$/, "a /64 of the cluster's ULA");
  const six = await h1.ctx.networks.createNetwork({ name: 'six', subnet: 'fd00:42::/64' });
  t.like(six, { subnet: 'fd00:42::/64', gateway: 'fd00:42::1', subnet6: 'fd00:42::/64' });

  // an endpoint of each: addresses from both pools, owned by the endpoint, released together
  const eid = 'e'.repeat(64);
  const both = await h1.ctx.networks.allocateAddresses(eid, { pool4: { family: 4, poolId: rec.poolId, subnet: rec.subnet, gateway: rec.gateway, auxAddresses: {} }, pool6: { family: 6, poolId: rec.poolId6!, subnet: rec.subnet6!, gateway: rec.gateway6!, auxAddresses: {} }, ip6: 'fd00:41::99' });
  t.is(both.v4?.address, '10.41.0.2/24');
  t.is(both.v6?.address, 'fd00:41::99/64');
  await t.throwsAsync(
    h1.ctx.networks.allocateAddresses('f'.repeat(64), { pool4: { family: 4, poolId: rec.poolId, subnet: rec.subnet, gateway: rec.gateway, auxAddresses: {} }, pool6: { family: 6, poolId: rec.poolId6!, subnet: rec.subnet6!, gateway: rec.gateway6!, auxAddresses: {} }, ip6: 'fd00:41::99' }),
    { code: 'KVNET_IPAM_ADDRESS_IN_USE' },
  );
  t.deepEqual((await h1.ctx.ipam.listAllocations(rec.poolId)).map((a) => a.owner), [eid], 'the refused second endpoint gave its IPv4 address back');

  // bad input: nothing stored
  const before = { nets: await keysUnder(store, 'networks'), pools: await keysUnder(store, 'ipam/pool-table/pools'), vnis: await keysUnder(store, 'ipam/vni/ids') };
  await t.throwsAsync(h1.ctx.networks.createNetwork({ name: 'wide', subnet: 'fd00:43::/48' }), {
    message: 'invalid subnet "fd00:43::/48": is larger than /64: use a /64 (or smaller) IPv6 subnet, or bound dynamic addresses with an ip-range of /64 or smaller inside it',
  });
  await t.throwsAsync(h1.ctx.networks.createNetwork({ name: 'wide4', subnet: ['10.44.0.0/24', 'fd00:44::/48'] }), { message: /^invalid subnet "fd00:44::\/48": is larger than \/64/ }, 'the IPv4 pool reserved first is released again');
  await t.throwsAsync(h1.ctx.networks.createNetwork({ name: 'overlap', subnet: 'fd00:41::/56', ipRange: 'fd00:41::/64' }), { message: /^subnet fd00:41::\/56 overlaps pool fd00:41::\/64/ });
  await t.throwsAsync(h1.ctx.networks.createNetwork({ name: 'outside', subnet: ['10.45.0.0/24', 'fd00:45::/64'], gateway: 'fd00:46::1' }), { message: 'invalid gateway "fd00:46::1": is not inside any subnet of the network (10.45.0.0/24, fd00:45::/64)' });
  t.deepEqual({ nets: await keysUnder(store, 'networks'), pools: await keysUnder(store, 'ipam/pool-table/pools'), vnis: await keysUnder(store, 'ipam/vni/ids') }, before);

  // removal releases both pools
  await h1.ctx.ipam.releaseAddress(rec.poolId, both.v4!.address, eid);
  await h1.ctx.ipam.releaseAddress(rec.poolId6!, both.v6!.address, eid);
  await h1.ctx.networks.deleteNetwork('dual');
  t.is(await h1.ctx.ipam.getPool(rec.poolId), undefined);
  t.is(await h1.ctx.ipam.getPool(rec.poolId6!), undefined);
});

test('Docker dual stack: IPv6 pool under its own PoolID, IPv6Data and AddressIPv6, the MTU option, both addresses owned by the endpoint, all released', async (t) => {
  const { store, storeUrl } = await freshStore(t);
  const h1 = await agent(t, storeUrl, 'h1', 1400);
  const call = plugin(h1);
  const p4 = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.90.0.0/24', SubPool: '', Options: {}, V6: false });
  const p6 = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: 'fd00:90::/64', SubPool: '', Options: {}, V6: true });
  t.is(p6.Pool, 'fd00:90::/64');
  t.is(p6.PoolID, `${(await h1.ctx.ipam.listPools()).find((p) => p.family === 6)!.owner}-v6`);
  t.deepEqual(await call('IpamDriver.RequestAddress', { PoolID: p6.PoolID, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } }), { Address: 'fd00:90::1/64', Data: {} });
  t.regex(String((await call('IpamDriver.RequestAddress', { PoolID: p6.PoolID, Address: 'fd00:91::1', Options: { RequestAddressType: 'com.docker.network.gateway' } })).Error), /outside subnet fd00:90::\/64/);

  // an MTU the underlay cannot carry is refused (Docker then releases its pools)
  const refused = await call('NetworkDriver.CreateNetwork', {
    NetworkID: DOCKER_NET, Options: { 'com.docker.network.enable_ipv6': true, 'com.docker.network.generic': { 'com.docker.network.driver.mtu': '1400' } },
    IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.90.0.1/24', Pool: '10.90.0.0/24' }], IPv6Data: [{ AddressSpace: 'kvnet', Gateway: 'fd00:90::1/64', Pool: 'fd00:90::/64' }],
  });
  t.is(refused.Err, 'invalid option com.docker.network.driver.mtu "1400": is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4)');
  t.deepEqual(await keysUnder(store, 'networks'), []);
  t.deepEqual(await call('NetworkDriver.CreateNetwork', {
    NetworkID: DOCKER_NET, Options: { 'com.docker.network.enable_ipv6': true, 'com.docker.network.generic': { 'com.docker.network.driver.mtu': '1300' } },
    IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.90.0.1/24', Pool: '10.90.0.0/24' }], IPv6Data: [{ AddressSpace: 'kvnet', Gateway: 'fd00:90::1/64', Pool: 'fd00:90::/64' }],
  }), {});
  const net = h1.docker.backend.findNetwork(DOCKER_NET)!;
  t.like(net, { id: p4.PoolID, subnet: '10.90.0.0/24', subnet6: 'fd00:90::/64', gateway6: 'fd00:90::1', mtu: 1300 });

  // a container with both families; --ip6 honoured
  const a4 = await call('IpamDriver.RequestAddress', { PoolID: p4.PoolID, Address: '', Options: null });
  const a6 = await call('IpamDriver.RequestAddress', { PoolID: p6.PoolID, Address: 'fd00:90::42', Options: null });
  t.is(a6.Address, 'fd00:90::42/64');
  const created = await call('NetworkDriver.CreateEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, Interface: { Address: a4.Address, AddressIPv6: a6.Address, MacAddress: '' }, Options: {} });
  t.deepEqual(created, { Interface: { MacAddress: '02:42:0a:5a:00:02' } });
  const ep = [...(h1.ctx.cluster.view().endpoints.get(net.id)?.values() ?? [])][0] as DockerEndpointRecord;
  t.like(ep, { address: '10.90.0.2/24', address6: 'fd00:90::42/64', ip6: 'fd00:90::42' });
  t.deepEqual((await h1.ctx.ipam.listAllocations(net.poolId6!)).map((a) => a.owner), [ep.id], 'the endpoint owns its IPv6 address too');
  const desired = computeDesiredState({ view: h1.ctx.cluster.view(), node: 'h1', egress: new Map() }).state.networks[0]!;
  t.deepEqual(desired.subnets, [{ cidr: '10.90.0.0/24', gateway: '10.90.0.1' }, { cidr: 'fd00:90::/64', gateway: 'fd00:90::1' }]);
  t.is(desired.mtu, 1300, 'the handoff veth gets the network MTU');
  t.like(desired.endpoints[0], { address: '10.90.0.2/24', addressIPv6: 'fd00:90::42/64', handoff: { hostIfname: ep.handoff! } });

  // removal in Docker's order: both addresses, both pools
  t.deepEqual(await call('NetworkDriver.DeleteEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP }), {});
  t.deepEqual(await h1.ctx.ipam.listAllocations(net.poolId6!), []);
  t.deepEqual(await h1.ctx.ipam.listAllocations(net.poolId), []);
  for (const [PoolID, Address] of [[p4.PoolID, a4.Address], [p6.PoolID, a6.Address], [p6.PoolID, 'fd00:90::1']]) t.deepEqual(await call('IpamDriver.ReleaseAddress', { PoolID, Address: String(Address).split('/')[0] }), {});
  t.deepEqual(await call('IpamDriver.ReleasePool', { PoolID: p6.PoolID }), {});
  t.truthy(await h1.ctx.ipam.getPool(net.poolId6!), 'ReleasePool before DeleteNetwork keeps the IPv6 pool of a live network');
  t.deepEqual(await call('NetworkDriver.DeleteNetwork', { NetworkID: DOCKER_NET }), {});
  t.deepEqual(await h1.ctx.ipam.listPools(), [], 'both pools went with the network');
});

test('Docker IPv6-only, and a second host adopting a dual-stack network by --ipam-opt for both families', async (t) => {
  const { storeUrl } = await freshStore(t);
  const h1 = await agent(t, storeUrl, 'h1', 1500);
  const h2 = await agent(t, storeUrl, 'h2', 1500);
  const call = plugin(h1);
  const call2 = plugin(h2);

  // IPv6-only (Docker 28: --ipv6 --ipv4=false): no IPv4Data
  const p6 = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: 'fd00:92::/64', SubPool: '', Options: {}, V6: true });
  t.deepEqual(await call('NetworkDriver.CreateNetwork', { NetworkID: DOCKER_NET, Options: {}, IPv4Data: [], IPv6Data: [{ AddressSpace: 'kvnet', Gateway: 'fd00:92::1/64', Pool: 'fd00:92::/64' }] }), {});
  const six = h1.docker.backend.findNetwork(DOCKER_NET)!;
  t.like(six, { subnet: 'fd00:92::/64', gateway: 'fd00:92::1', subnet6: 'fd00:92::/64', mtu: 1450 });
  t.is(`${six.id}-v6`, String(p6.PoolID), 'the IPv6 pool owner is the network id');
  const a6 = await call('IpamDriver.RequestAddress', { PoolID: p6.PoolID, Address: '', Options: null });
  const made = await call('NetworkDriver.CreateEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, Interface: { Address: '', AddressIPv6: a6.Address, MacAddress: '' }, Options: {} });
  t.regex((made.Interface as { MacAddress: string }).MacAddress, /^06(:[0-9a-f]{2}){5}$/);
  const ep = [...(h1.ctx.cluster.view().endpoints.get(six.id)?.values() ?? [])][0]!;
  t.like(ep, { address: a6.Address, address6: a6.Address });

  // a dual-stack network made on h1, mirrored on h2 (the Engine API create of DockerNetworkSync)
  const D1 = 'c'.repeat(64);
  const q4 = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.93.0.0/24', SubPool: '', Options: {}, V6: false });
  const q6 = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: 'fd00:93::/64', SubPool: '', Options: {}, V6: true });
  await call('NetworkDriver.CreateNetwork', { NetworkID: D1, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.93.0.1/24', Pool: '10.93.0.0/24' }], IPv6Data: [{ AddressSpace: 'kvnet', Gateway: 'fd00:93::1/64', Pool: 'fd00:93::/64' }] });
  const dual = h1.docker.backend.findNetwork(D1)! as DockerNetworkRecord;
  t.is(dual.id, String(q4.PoolID));
  const adopted4 = await call2('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.93.0.0/24', SubPool: '', Options: { 'kvnet.network': dual.id }, V6: false });
  const adopted6 = await call2('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: 'fd00:93::/64', SubPool: '', Options: { 'kvnet.network': dual.id }, V6: true });
  t.deepEqual([adopted4.PoolID, adopted6.PoolID], [q4.PoolID, q6.PoolID], 'the same PoolIDs on every host');
  t.regex(String((await call2('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '', SubPool: '', Options: { 'kvnet.network': six.id }, V6: false })).Error), /has no IPv4 subnet \(its subnet is fd00:92::\/64\)/);
  const D2 = 'd'.repeat(64);
  t.deepEqual(await call2('NetworkDriver.CreateNetwork', { NetworkID: D2, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.93.0.1/24', Pool: '10.93.0.0/24' }], IPv6Data: [{ AddressSpace: 'kvnet', Gateway: 'fd00:93::1/64', Pool: 'fd00:93::/64' }] }), {});
  t.is(h2.docker.backend.findNetwork(D2)?.id, dual.id);
  const b4 = await call2('IpamDriver.RequestAddress', { PoolID: adopted4.PoolID, Address: '', Options: null });
  const b6 = await call2('IpamDriver.RequestAddress', { PoolID: adopted6.PoolID, Address: '', Options: null });
  t.deepEqual(await call2('NetworkDriver.CreateEndpoint', { NetworkID: D2, EndpointID: DOCKER_EP, Interface: { Address: b4.Address, AddressIPv6: b6.Address, MacAddress: '' }, Options: {} }), { Interface: { MacAddress: '02:42:0a:5d:00:02' } });
  const ep2 = [...(h2.ctx.cluster.view().endpoints.get(dual.id)?.values() ?? [])][0]!;
  t.deepEqual((await h2.ctx.ipam.listAllocations(dual.poolId6!)).map((a) => [a.address, a.owner]), [[String(b6.Address), ep2.id]]);
  // h1 programs h2's endpoint as a peer of both families
  await h1.ctx.cluster.waitForView(keys.endpoint(dual.id, ep2.id), true);
  t.like(h1.ctx.cluster.view().endpoints.get(dual.id)?.get(ep2.id), { address: String(b4.Address), address6: String(b6.Address) });
  const peers = computeDesiredState({ view: h1.ctx.cluster.view(), node: 'h1', egress: new Map() }).state.networks.find((n) => n.id === six.id)?.peers;
  t.deepEqual(peers, [], 'the IPv6-only network has no remote endpoint');
});
