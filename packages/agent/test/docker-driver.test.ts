/**
 * The Docker driver + IPAM on the real embedded store and the real IPAM (no root, no kernel): Docker's
 * observed call sequences (DOCKER-PLUGIN.md, "Call order") replayed through the plugin protocol, and what they
 * leave in the store.
 */

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type KVStore } from '@kvnet/store';
import { RecordingDataplane, startTestAgent, type TestAgent } from '../../../test/support/test-agent.ts';
import { computeDesiredState } from '../src/desired-state.ts';
import { handoffIfname, provisionalNetworkName, type DockerEndpointRecord, type DockerNetworkRecord } from '../src/docker/backend.ts';
import { dispatchPluginCall } from '../src/docker/protocol.ts';
import { decodeRecord, encodeRecord, keys, newId, type EndpointRecord } from '../src/layout.ts';

const DOCKER_NET = 'a'.repeat(64);
const DOCKER_EP = 'b'.repeat(64);

/** The real agent in this process on a fresh embedded store, with its Docker plugin (no kernel: a recording data plane). */
async function setup(t: { teardown: (fn: () => Promise<void> | void) => void }): Promise<{ store: KVStore; storeUrl: string; host: TestAgent; call: (m: string, body?: unknown) => Promise<Record<string, unknown>> }> {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-docker-'));
  const storeUrl = `local://${dir}/store.db`;
  const store = await openStore(storeUrl);
  const host = await startTestAgent({ storeUrl, node: 'h1', vtep: '198.18.0.1', docker: {} });
  t.teardown(async () => {
    await host.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const call = async (m: string, body?: unknown) => (await dispatchPluginCall(m, body === undefined ? '' : JSON.stringify(body) + '\n', host.docker.driver)).body;
  return { store, storeUrl, host, call };
}

test('network create with subnet, ip-range, aux address and options, then a container, then removal (Docker 20.10 order)', async (t) => {
  const { store, host, call } = await setup(t);
  t.deepEqual(await call('IpamDriver.GetDefaultAddressSpaces'), { LocalDefaultAddressSpace: 'kvnet', GlobalDefaultAddressSpace: 'kvnet' });
  const pool = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.77.0.0/24', SubPool: '10.77.0.128/25', Options: {}, V6: false });
  t.is(pool.Pool, '10.77.0.0/24');
  const PoolID = pool.PoolID as string;
  t.deepEqual(await call('IpamDriver.RequestAddress', { PoolID, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } }), { Address: '10.77.0.1/24', Data: {} });
  t.deepEqual(await call('IpamDriver.RequestAddress', { PoolID, Address: '10.77.0.5', Options: null }), { Address: '10.77.0.5/24', Data: {} });
  t.deepEqual(
    await call('NetworkDriver.CreateNetwork', {
      NetworkID: DOCKER_NET,
      Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': { myopt: 'foo' } },
      IPv4Data: [{ AddressSpace: 'kvnet', AuxAddresses: { reserved1: '10.77.0.5/24' }, Gateway: '10.77.0.1/24', Pool: '10.77.0.0/24' }],
      IPv6Data: [],
    }),
    {},
  );
  const net = host.docker.backend.findNetwork(DOCKER_NET) as DockerNetworkRecord;
  t.like(net, { name: provisionalNetworkName(DOCKER_NET), subnet: '10.77.0.0/24', gateway: '10.77.0.1', ipRange: '10.77.0.128/25', auxAddresses: { reserved1: '10.77.0.5' }, internal: false, options: { myopt: 'foo' } });
  t.deepEqual(net.docker?.networks, { h1: DOCKER_NET });
  t.true(net.vni >= 256);
  t.is(PoolID, net.id, "Docker's PoolID is the kvnet network id, which owns the pool");
  t.is((await host.ctx.ipam.getPool(net.poolId))?.owner, net.id);

  // a container
  const addr = await call('IpamDriver.RequestAddress', { PoolID, Address: '', Options: null });
  t.regex(String(addr.Address), /^10\.77\.0\.(12[89]|1[3-9][0-9]|2[0-5][0-9])\/24$/, 'from the ip-range');
  const ip = String(addr.Address).split('/')[0]!;
  const mac = `02:42:0a:4d:00:${Number(ip.split('.')[3]).toString(16).padStart(2, '0')}`;
  t.deepEqual(
    await call('NetworkDriver.CreateEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, Interface: { Address: addr.Address, AddressIPv6: '', MacAddress: '' }, Options: { 'com.docker.network.endpoint.exposedports': [], 'com.docker.network.portmap': [] } }),
    { Interface: { MacAddress: mac } },
  );
  const ep = [...(host.ctx.cluster.view().endpoints.get(net.id)?.values() ?? [])][0] as DockerEndpointRecord;
  t.like(ep, { node: 'h1', ip, mac, address: addr.Address, docker: { networkId: DOCKER_NET, endpointId: DOCKER_EP }, handoff: handoffIfname(ep.id) });
  t.is(ep.netns, undefined);
  t.deepEqual((await host.ctx.ipam.listAllocations(net.poolId)).map((a) => a.owner), [ep.id], 'the address is owned by the endpoint');
  const join = await call('NetworkDriver.Join', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, SandboxKey: '/var/run/docker/netns/33fa76c6ebeb', Options: {} });
  t.deepEqual(join, { InterfaceName: { SrcName: handoffIfname(ep.id), DstPrefix: 'eth' }, DisableGatewayService: false });
  t.true(handoffIfname(ep.id).length <= 15);

  // the data plane gets it as a handoff endpoint
  const state = computeDesiredState({ view: host.ctx.cluster.view(), node: 'h1', egress: new Map() }).state;
  t.deepEqual(state.networks.map((n) => ({ id: n.id, endpoints: n.endpoints })), [{ id: net.id, endpoints: [{ id: ep.id, address: ep.address, mac, handoff: { hostIfname: ep.handoff! } }] }]);

  // removal, in Docker's order
  t.deepEqual(await call('NetworkDriver.Leave', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP }), {});
  t.deepEqual(await call('NetworkDriver.DeleteEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP }), {});
  t.deepEqual(await call('IpamDriver.ReleaseAddress', { PoolID, Address: ip }), {});
  t.deepEqual(await call('IpamDriver.ReleaseAddress', { PoolID, Address: '10.77.0.1' }), {});
  t.deepEqual(await call('IpamDriver.ReleaseAddress', { PoolID, Address: '10.77.0.5' }), {});
  t.deepEqual(await call('IpamDriver.ReleasePool', { PoolID }), {});
  t.truthy(await host.ctx.ipam.getPool(net.poolId), 'ReleasePool before DeleteNetwork keeps the pool of a live network');
  t.deepEqual(await call('NetworkDriver.DeleteNetwork', { NetworkID: DOCKER_NET }), {});
  t.is(await store.get(keys.network(net.id)), undefined);
  t.is(await host.ctx.ipam.getPool(net.poolId), undefined, 'the pool goes with the network');
  t.is(host.docker.backend.findNetwork(DOCKER_NET), undefined);
});

test('a network on Docker\'s default IPAM is refused with the fix in the message', async (t) => {
  const { call } = await setup(t);
  const r = await call('NetworkDriver.CreateNetwork', { NetworkID: DOCKER_NET, Options: {}, IPv4Data: [{ AddressSpace: 'LocalDefault', Gateway: '172.20.0.1/16', Pool: '172.20.0.0/16' }], IPv6Data: [] });
  t.regex(String(r.Err), /add --ipam-driver kvnet/);
});

test('a user gateway reshapes the pool; --internal is kept; default pools are handed out without a subnet', async (t) => {
  const { host, call } = await setup(t);
  const pool = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.78.0.0/24', SubPool: '', Options: {}, V6: false });
  const PoolID = pool.PoolID as string;
  t.deepEqual(await call('IpamDriver.RequestAddress', { PoolID, Address: '10.78.0.254', Options: { RequestAddressType: 'com.docker.network.gateway' } }), { Address: '10.78.0.254/24', Data: {} });
  t.regex(String((await call('IpamDriver.RequestAddress', { PoolID, Address: '10.99.0.1', Options: { RequestAddressType: 'com.docker.network.gateway' } })).Error), /outside subnet 10.78.0.0\/24/);
  t.deepEqual(await call('NetworkDriver.CreateNetwork', { NetworkID: DOCKER_NET, Options: { 'com.docker.network.internal': true, 'com.docker.network.generic': {} }, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.78.0.254/24', Pool: '10.78.0.0/24' }], IPv6Data: [] }), {});
  t.like(host.docker.backend.findNetwork(DOCKER_NET), { gateway: '10.78.0.254', internal: true });
  t.is((await host.docker.backend.getPool(PoolID))?.gateway, '10.78.0.254/24');
  // the old default gateway is an ordinary address now
  const a = await call('IpamDriver.RequestAddress', { PoolID, Address: '10.78.0.1', Options: null });
  t.is(a.Address, '10.78.0.1/24');

  const auto = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '', SubPool: '', Options: {}, V6: false });
  t.regex(String(auto.Pool), /^10\.\d+\.\d+\.0\/24$/);
  t.regex(String((await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.78.0.0/25', SubPool: '', Options: {}, V6: false })).Error), /overlaps/);
  // --ipv6 without an IPv6 subnet: a /64 of the cluster's ULA, under its own PoolID
  const auto6 = await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '', SubPool: '', Options: {}, V6: true });
  t.regex(String(auto6.Pool), /^fd[0-9a-f]{2}:[0-9a-f:]+\/64$/);
  t.regex(String(auto6.PoolID), /^[0-9a-f]{64}-v6$/);
  t.deepEqual(await call('IpamDriver.ReleasePool', { PoolID: auto6.PoolID }), {});
  // a failed create's rollback: ReleasePool of a pool without a network releases it
  t.deepEqual(await call('IpamDriver.ReleasePool', { PoolID: auto.PoolID }), {});
  t.is(await host.docker.backend.getPool(auto.PoolID as string), undefined);
});

test('DeleteNetwork is refused while another host has an endpoint; a failed plumb rolls nothing back silently', async (t) => {
  const { store, host, call } = await setup(t);
  const { PoolID } = (await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.79.0.0/24', SubPool: '', Options: {}, V6: false })) as { PoolID: string };
  await call('NetworkDriver.CreateNetwork', { NetworkID: DOCKER_NET, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.79.0.1/24', Pool: '10.79.0.0/24' }], IPv6Data: [] });
  const net = host.docker.backend.findNetwork(DOCKER_NET)!;
  // an endpoint on h2
  const eid = newId();
  const a = await host.ctx.ipam.allocateAddress(net.poolId, { owner: eid });
  // h2 is a live host (its node record is there), so the agent's reaper leaves its endpoint alone
  await store.put(keys.node('h2'), encodeRecord({ name: 'h2', advertise: '198.18.0.2', advertiseAddr: '198.18.0.2', version: 'test', startedAt: '', nodeId: 'x' }));
  const remote: EndpointRecord = { id: eid, name: 'c2', network: net.id, node: 'h2', nodeId: 'x', address: a.address, ip: a.ip, mac: '02:42:0a:4f:00:02', vtep: '198.18.0.2', createdAt: new Date().toISOString() };
  await store.put(keys.endpoint(net.id, eid), encodeRecord(remote));
  const refused = await call('NetworkDriver.DeleteNetwork', { NetworkID: DOCKER_NET });
  t.regex(String(refused.Err), /has active endpoints: c2 \(on h2\)/);
  t.falsy(decodeRecord<{ deleting?: boolean }>((await store.get(keys.network(net.id)))!.value, 'n').deleting);

  // a data plane error for the new endpoint is reported to Docker (which then rolls back with DeleteEndpoint)
  const dataplane = host.dataplane as RecordingDataplane;
  dataplane.errors = (state) =>
    (state.networks.find((n) => n.id === net.id)?.endpoints ?? []).map((e) =>
      Object.assign(new Error(`cannot create veth for endpoint ${e.id}`), { code: 'KVNET_DATAPLANE_KERNEL_REFUSED', kind: 'conflict', object: { kind: 'endpoint', endpoint: e.id, network: net.id } }),
    ) as never;
  const addr = await call('IpamDriver.RequestAddress', { PoolID, Address: '', Options: null });
  const r = await call('NetworkDriver.CreateEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, Interface: { Address: addr.Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  t.regex(String(r.Err), /cannot create veth/);
  dataplane.errors = () => [];
  t.deepEqual(await call('NetworkDriver.DeleteEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP }), {});
  t.deepEqual(await call('IpamDriver.ReleaseAddress', { PoolID, Address: addr.Address }), {});
  t.deepEqual((await host.ctx.ipam.listAllocations(net.poolId)).map((x) => x.owner), [eid], 'only the remote endpoint holds an address');
  // an address Docker asked for but never used (CreateEndpoint never came) is released by ReleaseAddress
  const unused = await call('IpamDriver.RequestAddress', { PoolID, Address: '', Options: null });
  await call('IpamDriver.ReleaseAddress', { PoolID, Address: String(unused.Address).split('/')[0] });
  t.deepEqual((await host.ctx.ipam.listAllocations(net.poolId)).map((x) => x.owner), [eid]);
  // unknown Docker ids are not an error on the way down
  t.deepEqual(await call('NetworkDriver.DeleteEndpoint', { NetworkID: DOCKER_NET, EndpointID: 'c'.repeat(64) }), {});
  t.regex(String((await call('NetworkDriver.Join', { NetworkID: DOCKER_NET, EndpointID: 'c'.repeat(64), SandboxKey: '/x', Options: {} })).Err), /no kvnet endpoint/);
});

test('a second host adopts the network through --ipam-opt kvnet.network=<nid> and binds its own Docker id', async (t) => {
  const { storeUrl, host, call } = await setup(t);
  const h2 = await startTestAgent({ storeUrl, node: 'h2', vtep: '198.18.0.2', docker: {} });
  t.teardown(() => h2.stop());
  const call2 = async (m: string, body?: unknown) => (await dispatchPluginCall(m, JSON.stringify(body ?? {}), h2.docker.driver)).body;
  const { PoolID } = (await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.81.0.0/24', SubPool: '', Options: {}, V6: false })) as { PoolID: string };
  await call('IpamDriver.RequestAddress', { PoolID, Address: '10.81.0.9', Options: null });
  await call('NetworkDriver.CreateNetwork', { NetworkID: DOCKER_NET, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.81.0.1/24', Pool: '10.81.0.0/24', AuxAddresses: { r: '10.81.0.9/24' } }], IPv6Data: [] });
  const net = host.docker.backend.findNetwork(DOCKER_NET)!;

  // what the Engine API create of DockerNetworkSync makes h2's dockerd send
  const adopted = await call2('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.81.0.0/24', SubPool: '', Options: { 'kvnet.network': net.id }, V6: false });
  t.deepEqual(adopted, { PoolID: net.id, Pool: '10.81.0.0/24', Data: {} });
  t.deepEqual(await call2('IpamDriver.RequestAddress', { PoolID: net.id, Address: '10.81.0.1', Options: { RequestAddressType: 'com.docker.network.gateway' } }), { Address: '10.81.0.1/24', Data: {} });
  t.deepEqual(await call2('IpamDriver.RequestAddress', { PoolID: net.id, Address: '10.81.0.9', Options: null }), { Address: '10.81.0.9/24', Data: {} }, 'an aux address of an adopted pool is answered, not allocated');
  const D2 = 'd'.repeat(64);
  t.deepEqual(await call2('NetworkDriver.CreateNetwork', { NetworkID: D2, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.81.0.1/24', Pool: '10.81.0.0/24', AuxAddresses: { r: '10.81.0.9/24' } }], IPv6Data: [] }), {});
  t.is(h2.docker.backend.findNetwork(D2)?.id, net.id);
  await waitForBinding(host, net.id);
  t.deepEqual((host.ctx.cluster.view().networks.get(net.id) as DockerNetworkRecord).docker?.networks, { h1: DOCKER_NET, h2: D2 });
  t.regex(String((await call2('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.82.0.0/24', SubPool: '', Options: { 'kvnet.network': net.id }, V6: false })).Error), /has IPv4 subnet 10.81.0.0\/24, not 10.82.0.0\/24/);

  // an endpoint on h2 through h2's Docker id
  const a = await call2('IpamDriver.RequestAddress', { PoolID: net.id, Address: '', Options: null });
  const created = await call2('NetworkDriver.CreateEndpoint', { NetworkID: D2, EndpointID: DOCKER_EP, Interface: { Address: a.Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  t.is((created.Interface as { MacAddress: string }).MacAddress, '02:42:0a:51:00:02');
  // removing the network from h1 is refused while h2 has it in use
  t.regex(String((await call('NetworkDriver.DeleteNetwork', { NetworkID: DOCKER_NET })).Err), /active endpoints/);
});

async function waitForBinding(host: TestAgent, nid: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if ((host.ctx.cluster.view().networks.get(nid) as DockerNetworkRecord | undefined)?.docker?.networks.h2) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('scope global: another host gets CreateEndpoint for a network it never saw and resolves it by the Docker id', async (t) => {
  const { storeUrl, call } = await setup(t);
  const h2 = await startTestAgent({ storeUrl, node: 'h2', vtep: '198.18.0.2', docker: { scope: 'global' } });
  t.teardown(() => h2.stop());
  t.deepEqual((await dispatchPluginCall('NetworkDriver.GetCapabilities', '', h2.docker.driver)).body, { Scope: 'global', ConnectivityScope: 'global' });
  const { PoolID } = (await call('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.83.0.0/24', SubPool: '', Options: {}, V6: false })) as { PoolID: string };
  await call('NetworkDriver.CreateNetwork', { NetworkID: DOCKER_NET, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.83.0.1/24', Pool: '10.83.0.0/24' }], IPv6Data: [] });
  for (let i = 0; i < 500 && !h2.docker.backend.findNetwork(DOCKER_NET); i++) await new Promise((r) => setTimeout(r, 10));
  // h2's dockerd read the network (and PoolID) from its cluster store: no RequestPool, no CreateNetwork here
  const call2 = async (m: string, body: unknown) => (await dispatchPluginCall(m, JSON.stringify(body), h2.docker.driver)).body;
  const a = await call2('IpamDriver.RequestAddress', { PoolID, Address: '', Options: null });
  t.regex(String(a.Address), /^10\.83\.0\.\d+\/24$/);
  const r = await call2('NetworkDriver.CreateEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, Interface: { Address: a.Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  t.truthy((r.Interface as { MacAddress?: string } | undefined)?.MacAddress, JSON.stringify(r));
  const ep = [...h2.ctx.cluster.view().endpoints.get(PoolID)!.values()][0] as DockerEndpointRecord;
  t.like(ep, { node: 'h2', docker: { networkId: DOCKER_NET, endpointId: DOCKER_EP } });
  t.deepEqual(await call2('NetworkDriver.Join', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP, SandboxKey: '/x', Options: {} }), { InterfaceName: { SrcName: ep.handoff, DstPrefix: 'eth' }, DisableGatewayService: false });
  t.deepEqual(await call2('NetworkDriver.DeleteEndpoint', { NetworkID: DOCKER_NET, EndpointID: DOCKER_EP }), {});
  t.is(h2.ctx.cluster.view().endpoints.get(PoolID)?.size ?? 0, 0);
});
