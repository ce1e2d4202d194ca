/**
 * Names through Docker, on the real embedded store and IPAM with a scripted Engine API (what dockerd's
 * container and network lists would answer; the real dockerd proof is test/docker/docker-plugin.test.ts):
 * an endpoint takes its container's name in CreateEndpoint when dockerd's list identifies the container,
 * a name used on another host is refused there, a leftover of the same container on this host is
 * replaced; a Docker network whose name another kvnet network already has is removed from dockerd again.
 */

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type KVStore } from '@kvnet/store';
import { startTestAgent, type TestAgent } from '../../../test/support/test-agent.ts';
import type { DockerEndpointRecord } from '../src/docker/backend.ts';
import type { DockerEngine, EngineContainer, EngineNetwork } from '../src/docker/engine.ts';
import { dispatchPluginCall } from '../src/docker/protocol.ts';
import { keys } from '../src/layout.ts';

/** What a dockerd would list; every call is recorded. */
class ScriptedEngine {
  /** Never dialled: the agent is handed this object instead of a client on a socket. */
  readonly socketPath = '/run/kvnet-test-scripted-docker.sock';
  containers: EngineContainer[] = [];
  networks: EngineNetwork[] = [];
  readonly removed: string[] = [];
  async listContainers(filters: Record<string, string[]>): Promise<EngineContainer[]> {
    const want = filters.network?.[0];
    return this.containers.filter((c) => want === undefined || Object.keys(c.NetworkSettings?.Networks ?? {}).includes(want));
  }
  async inspectNetwork(id: string): Promise<EngineNetwork | undefined> {
    return this.networks.find((n) => n.Id === id);
  }
  async listNetworks(): Promise<EngineNetwork[]> {
    return this.networks;
  }
  async createNetwork(): Promise<string> {
    throw new Error('not in this test');
  }
  async removeNetwork(id: string): Promise<void> {
    this.removed.push(id);
  }
}

const D1 = '1'.repeat(64);
const D2 = '2'.repeat(64);

function starting(name: string, network: string, state = 'created'): EngineContainer {
  return { Id: name.padEnd(64, '0'), Names: [`/${name}`], State: state, NetworkSettings: { Networks: { [network]: { NetworkID: '', EndpointID: '' } } } };
}

async function twoHosts(t: { teardown: (fn: () => Promise<void> | void) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-names-'));
  const storeUrl = `local://${dir}/store.db`;
  const store: KVStore = await openStore(storeUrl);
  const e1 = new ScriptedEngine();
  const e2 = new ScriptedEngine();
  const h1 = await startTestAgent({ storeUrl, node: 'h1', vtep: '198.18.0.1', docker: { engine: e1 as unknown as DockerEngine } });
  const h2 = await startTestAgent({ storeUrl, node: 'h2', vtep: '198.18.0.2', docker: { engine: e2 as unknown as DockerEngine, scope: 'global' } });
  t.teardown(async () => {
    await h1.stop();
    await h2.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const call = (h: TestAgent) => async (m: string, body: unknown) => (await dispatchPluginCall(m, JSON.stringify(body), h.docker.driver)).body;
  return { store, e1, e2, h1, h2, c1: call(h1), c2: call(h2) };
}

/** A network `multi` made through Docker on h1 (named from h1's engine), seen by h2 under the same Docker id (as with scope global). */
async function multi(env: Awaited<ReturnType<typeof twoHosts>>, subnet: string) {
  const { e1, h1, h2, c1 } = env;
  e1.networks.push({ Id: D1, Name: 'multi', Driver: 'kvnet', Scope: 'local' });
  const { PoolID } = (await c1('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: subnet, SubPool: '', Options: {}, V6: false })) as { PoolID: string };
  await c1('NetworkDriver.CreateNetwork', { NetworkID: D1, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: subnet.replace(/0\/\d+$/, '1/24'), Pool: subnet }], IPv6Data: [] });
  await h1.docker.driver.idle();
  for (let i = 0; i < 500 && h2.docker.backend.findNetwork(D1)?.name !== 'multi'; i++) await new Promise((r) => setTimeout(r, 10));
  return PoolID;
}

async function endpoint(call: (m: string, b: unknown) => Promise<Record<string, unknown>>, PoolID: string, eid: string) {
  const a = await call('IpamDriver.RequestAddress', { PoolID, Address: '', Options: null });
  const r = await call('NetworkDriver.CreateEndpoint', { NetworkID: D1, EndpointID: eid, Interface: { Address: a.Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  return { address: String(a.Address), err: r.Err as string | undefined };
}

test('CreateEndpoint takes the name of the one container dockerd lists as starting on the network; the name is unique across hosts', async (t) => {
  const env = await twoHosts(t);
  const PoolID = await multi(env, '10.91.0.0/24');
  env.e1.containers = [starting('c1', 'multi'), { ...starting('old', 'multi', 'running'), NetworkSettings: { Networks: { multi: { EndpointID: 'e'.repeat(64) } } } }];
  t.is((await endpoint(env.c1, PoolID, 'a'.repeat(64))).err, undefined);
  t.truthy(await env.store.get(keys.epname(PoolID, 'c1')), 'named c1 in CreateEndpoint, before dockerd lists it as connected');

  env.e2.containers = [starting('c1', 'multi')];
  const dup = await endpoint(env.c2, PoolID, 'b'.repeat(64));
  t.is(dup.err, 'endpoint with name c1 already exists in network multi');
  // Docker releases the address of a failed CreateEndpoint; nothing of the refused endpoint is stored
  await env.c2('IpamDriver.ReleaseAddress', { PoolID, Address: dup.address });
  t.is((await env.h2.ctx.ipam.listAllocations((env.h1.ctx.cluster.view().networks.get(PoolID))!.poolId)).length, 1);
  t.is(env.h2.ctx.cluster.view().endpoints.get(PoolID)?.size, 1);
});

test('several containers starting on the network at once: the endpoint keeps its id as name until dockerd lists it', async (t) => {
  const env = await twoHosts(t);
  const PoolID = await multi(env, '10.92.0.0/24');
  env.e1.containers = [starting('x1', 'multi'), starting('x2', 'multi', 'exited')];
  t.is((await endpoint(env.c1, PoolID, 'c'.repeat(64))).err, undefined);
  t.truthy(await env.store.get(keys.epname(PoolID, 'c'.repeat(12))));
  t.is(await env.store.get(keys.epname(PoolID, 'x1')), undefined);
});

test('a leftover endpoint of the same container on this host (dockerd lost it without DeleteEndpoint) is replaced', async (t) => {
  const env = await twoHosts(t);
  const PoolID = await multi(env, '10.93.0.0/24');
  env.e1.containers = [starting('r1', 'multi')];
  const first = await endpoint(env.c1, PoolID, 'd'.repeat(64));
  t.is(first.err, undefined);
  // dockerd restarted after a power loss and starts r1 again with a new endpoint id; its settings still
  // carry the endpoint id it lost
  env.e1.containers = [{ ...starting('r1', 'multi', 'exited'), NetworkSettings: { Networks: { multi: { EndpointID: 'd'.repeat(64) } } } }];
  const second = await endpoint(env.c1, PoolID, 'f'.repeat(64));
  t.is(second.err, undefined);
  const eps = [...env.h1.ctx.cluster.view().endpoints.get(PoolID)!.values()] as DockerEndpointRecord[];
  t.deepEqual(eps.map((e) => [e.name, e.docker?.endpointId]), [['r1', 'f'.repeat(64)]]);
  const allocations = await env.h1.ctx.ipam.listAllocations(env.h1.ctx.cluster.view().networks.get(PoolID)!.poolId);
  t.deepEqual(allocations.map((a) => a.address), [second.address], 'the leftover\'s address is released');
});

test('a Docker network whose name another kvnet network already has is removed from dockerd again', async (t) => {
  const env = await twoHosts(t);
  await multi(env, '10.94.0.0/24');
  // on h2, `docker network create -d kvnet --ipam-driver kvnet multi` before the mirror of h1's multi arrived
  env.e2.networks.push({ Id: D2, Name: 'multi', Driver: 'kvnet', Scope: 'local' });
  const { PoolID } = (await env.c2('IpamDriver.RequestPool', { AddressSpace: 'kvnet', Pool: '10.95.0.0/24', SubPool: '', Options: {}, V6: false })) as { PoolID: string };
  t.deepEqual(await env.c2('NetworkDriver.CreateNetwork', { NetworkID: D2, Options: {}, IPv4Data: [{ AddressSpace: 'kvnet', Gateway: '10.95.0.1/24', Pool: '10.95.0.0/24' }], IPv6Data: [] }), {});
  await env.h2.docker.driver.idle();
  t.deepEqual(env.e2.removed, [D2], 'the duplicate is removed through the Engine API (dockerd then sends DeleteNetwork)');
  await env.c2('NetworkDriver.DeleteNetwork', { NetworkID: D2 });
  t.is(env.h2.ctx.cluster.view().networks.get(PoolID), undefined);
});
