/**
 * The kvnet Docker plugin against a real dockerd (28.5.2, the default engine) on a simulated host:
 * `docker network create -d kvnet --ipam-driver kvnet …`, `docker run` on it, the container's address,
 * MAC and MTU, pings over the overlay, and clean removal — the store, IPAM and kernel end up empty.
 * Needs root, dockerd and busybox-static; the tests fail with the reason otherwise.
 *
 * The agents run in this test process (test/support/test-agent.ts: the composition root `kvnet agent`
 * runs, started in-process so the test can reach its parts): the embedded store, the real IPAM, the
 * real data plane working in the host's namespace, and the plugin socket in the per-host directory
 * dockerd sees as /run/docker/plugins.
 */

import test from 'ava';
import { join } from 'node:path';
import { pino } from 'pino';
import { Dataplane } from '@kvnet/dataplane';
import { openStore, type KVStore } from '@kvnet/store';
import { canRunDockerd, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { makeTempDir, removeTempDir, run, runId, waitFor } from '../support/process.ts';
import { createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';
import { startTestAgent, type TestAgent } from '../support/test-agent.ts';
import type { DockerEndpointRecord } from '../../packages/agent/src/docker/backend.ts';
import { DockerEngine } from '../../packages/agent/src/docker/engine.ts';
import { DockerNetworkSync } from '../../packages/agent/src/docker/network-sync.ts';
import { ENDPOINTS, keys } from '../../packages/agent/src/layout.ts';

const usable = await canRunDockerd();
// Never skipped: on a machine without what this needs, every test fails with the reason.
const rt = test.serial;

const id = runId();
const NET = `kvnet${id}`;
const SUBNET = '10.213.0.0/24';
let sim: SimNetwork | undefined;
let dir = '';
let store: KVStore | undefined;
const stores: KVStore[] = [];
const dataplanes: Dataplane[] = [];
const dockerds: Dockerd[] = [];
const hosts: Host[] = [];
let dockerd: Dockerd | undefined;
let host: Host | undefined;

/** The parts of a host's agent these tests look at. */
interface Host {
  readonly backend: TestAgent['docker']['backend'];
  readonly driver: TestAgent['docker']['driver'];
  readonly ipam: TestAgent['ctx']['ipam'];
  view(): ReturnType<TestAgent['ctx']['cluster']['view']>;
  reconcileNow(): Promise<unknown>;
  stop(): Promise<void>;
}

function partsOf(a: TestAgent): Host {
  return { backend: a.docker.backend, driver: a.docker.driver, ipam: a.ctx.ipam, view: () => a.ctx.cluster.view(), reconcileNow: () => a.ctx.reconciler.reconcileNow(), stop: () => a.stop() };
}

test.before(async () => {
  if (!usable) throw new Error('cannot run the Docker tests: this needs root, dockerd, containerd, runc and busybox-static (scripts/setup.sh installs them)');
  if (!usable) return;
  dir = makeTempDir(`docker-${id}`);
  sim = await createSimNetwork({ hosts: 2, prefix: id });
  const logger = pino({ level: process.env.KVNET_TEST_LOG ?? 'silent' });
  for (const [i, h] of sim.hosts.entries()) {
    // one store handle per host, on one SQLite file, as separate agents would have
    const s = await openStore(`local://${dir}/store.db`);
    stores.push(s);
    const dp = new Dataplane({ namePrefix: `${id}${i + 1}`, vtep: h.address, hostNetns: h.name, gatewayBridge: false, logger });
    dataplanes.push(dp);
    const d = await startDockerd({ host: h, runId: id });
    dockerds.push(d);
    const agent = await startTestAgent({ storeUrl: `local://${dir}/store.db`, node: `h${i + 1}`, vtep: h.address, dataplane: dp, docker: { socketPath: join(d.pluginDir, 'kvnet.sock'), engine: new DockerEngine(d.socket) }, logger });
    hosts.push(partsOf(agent));
  }
  store = stores[0];
  dockerd = dockerds[0];
  host = hosts[0];
});

test.after.always(async () => {
  for (const d of dockerds) await d.stop().catch((err) => console.error('dockerd teardown:', err));
  for (const h of hosts) await h.stop().catch(() => undefined);
  for (const dp of dataplanes) await dp.destroyAll().catch((err) => console.error('data plane teardown:', err));
  for (const s of stores) await s.close().catch(() => undefined);
  await sim?.destroy().catch(() => undefined);
  if (dir) removeTempDir(dir);
});

function hexByte(n: number): string {
  return n.toString(16).padStart(2, '0');
}

rt('a network made with docker network create gets kvnet addresses, the IP-derived MAC, MTU 1450 and working pings', async (t) => {
  const d = dockerd!;
  const created = await d.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', SUBNET, '--ip-range', '10.213.0.128/25', '--aux-address', 'r1=10.213.0.5', '-o', 'myopt=foo', NET);
  const dockerId = created.split('\n').pop()!;
  t.regex(dockerId, /^[0-9a-f]{64}$/);

  // the kvnet network, under the Docker name once learned from the Engine API
  const net = await waitFor('network name learned', () => {
    const n = host!.backend.findNetwork(dockerId);
    return n?.name === NET ? n : undefined;
  }, 30_000);
  t.like(net, { subnet: SUBNET, gateway: '10.213.0.1', ipRange: '10.213.0.128/25', auxAddresses: { r1: '10.213.0.5' }, options: { myopt: 'foo' } });
  t.is(decodeName(await store!.get(keys.netname(NET))), net.id);

  const inspect = JSON.parse(await d.dockerOk('network', 'inspect', NET))[0];
  t.is(inspect.Driver, 'kvnet');
  t.like(inspect.IPAM, { Driver: 'kvnet', Config: [{ Subnet: SUBNET, IPRange: '10.213.0.128/25', AuxiliaryAddresses: { r1: '10.213.0.5' } }] });

  await d.dockerOk('run', '-d', '--name', `c1${id}`, '--network', NET, d.image, 'sleep', '3600');
  await d.dockerOk('run', '-d', '--name', `c2${id}`, '--network', NET, d.image, 'sleep', '3600');

  const eps = [...(host!.view().endpoints.get(net.id)?.values() ?? [])];
  t.is(eps.length, 2);
  // CreateEndpoint carries no name: the sync names each endpoint after its container once dockerd lists it
  await waitFor('endpoints named after their containers', () => {
    const names = [...(host!.view().endpoints.get(net.id)?.values() ?? [])].map((e) => e.name).sort();
    return names.join(',') === [`c1${id}`, `c2${id}`].join(',');
  }, 30_000, 100);
  t.is(decodeName(await store!.get(keys.epname(net.id, `c1${id}`)))?.length, 64);
  const ips: string[] = [];
  for (const c of [`c1${id}`, `c2${id}`]) {
    const addr = await d.dockerOk('exec', c, 'ip', '-o', '-4', 'addr', 'show', 'eth0');
    const m = /inet (10\.213\.0\.(\d+))\/24/.exec(addr);
    t.truthy(m, addr);
    const ip = m![1]!;
    t.true(Number(m![2]) >= 128, `${ip} is in the ip-range`);
    ips.push(ip);
    const link = await d.dockerOk('exec', c, 'ip', 'link', 'show', 'eth0');
    t.regex(link, /mtu 1450/);
    const mac = `02:42:${ip.split('.').map((x) => hexByte(Number(x))).join(':')}`;
    t.true(link.includes(`link/ether ${mac}`), link);
    t.truthy(eps.find((e) => e.ip === ip && e.mac === mac && e.node === 'h1'));
    // no gateway in the Join answer: Docker adds docker_gwbridge as eth1 with the default route
    const routes = await d.dockerOk('exec', c, 'ip', 'route');
    t.regex(routes, /default via \S+ dev eth1/);
    t.regex(routes, /10\.213\.0\.0\/24 dev eth0/);
  }
  t.not(ips[0], ips[1]);
  t.is((await d.docker('exec', `c1${id}`, 'ping', '-c', '2', '-W', '5', ips[1]!)).code, 0, 'c1 pings c2 over the overlay');
  t.is((await d.docker('exec', `c2${id}`, 'ping', '-c', '2', '-W', '5', '10.213.0.1')).code, 0, 'c2 pings the gateway');

  // --ip, and network disconnect / connect of a running container
  await d.dockerOk('run', '-d', '--name', `c3${id}`, '--network', NET, '--ip', '10.213.0.200', d.image, 'sleep', '3600');
  t.regex(await d.dockerOk('exec', `c3${id}`, 'ip', '-o', '-4', 'addr', 'show', 'eth0'), /inet 10\.213\.0\.200\/24/);
  const taken = await d.docker('run', '-d', '--name', `c4${id}`, '--network', NET, '--ip', '10.213.0.200', d.image, 'sleep', '3600');
  t.not(taken.code, 0);
  t.regex(taken.stderr, new RegExp(`address 10\\.213\\.0\\.200 is already in use in network ${NET} by c3${id} on h1`));
  await d.docker('rm', '-f', `c4${id}`);
  await d.dockerOk('network', 'disconnect', NET, `c3${id}`);
  t.falsy((await host!.ipam.listAllocations(net.poolId)).find((a) => a.ip === '10.213.0.200'), 'disconnect released the address');
  t.false([...(host!.view().endpoints.get(net.id)?.values() ?? [])].some((e) => e.ip === '10.213.0.200'));
  await d.dockerOk('network', 'connect', NET, `c3${id}`);
  const again = await d.dockerOk('exec', `c3${id}`, 'ip', '-o', '-4', 'addr');
  const m3 = /inet (10\.213\.0\.\d+)\/24/.exec(again);
  t.truthy(m3, again);
  t.is((await d.docker('exec', `c3${id}`, 'ping', '-c', '2', '-W', '5', ips[0]!)).code, 0, 'a reconnected container reaches c1');

  // removal: the store, IPAM and the kernel are cleaned up
  await d.dockerOk('rm', '-f', `c1${id}`, `c2${id}`, `c3${id}`);
  await waitFor('endpoints removed from the store', async () => (await store!.list(`${ENDPOINTS}/${net.id}`)).entries.length === 0, 30_000);
  t.deepEqual(await host!.ipam.listAllocations(net.poolId), []);
  await d.dockerOk('network', 'rm', NET);
  t.is(await store!.get(keys.network(net.id)), undefined);
  t.is(await store!.get(keys.netname(NET)), undefined);
  t.is(await host!.ipam.getPool(net.poolId), undefined);
  await host!.reconcileNow();
  const links = await run('ip', ['-n', sim!.hosts[0]!.name, '-o', 'link'], { allowFailure: true });
  t.false(links.stdout.includes('kvd'), 'no handoff interface is left on the host');
  const netns = await run('ip', ['netns', 'list']);
  t.false(netns.stdout.includes(`${id}1-${net.id}`), 'the overlay namespace is gone');
});

rt('--internal: only eth0, no default route, and still the overlay', async (t) => {
  const d = dockerd!;
  const internal = `int${id}`;
  await d.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--internal', '--subnet', '10.215.0.0/24', internal);
  await d.dockerOk('run', '-d', '--name', `i1${id}`, '--network', internal, d.image, 'sleep', '3600');
  await d.dockerOk('run', '-d', '--name', `i2${id}`, '--network', internal, d.image, 'sleep', '3600');
  const links = await d.dockerOk('exec', `i1${id}`, 'ip', '-o', 'link');
  t.regex(links, /eth0/);
  t.notRegex(links, /eth1/);
  t.notRegex(await d.dockerOk('exec', `i1${id}`, 'ip', 'route'), /default/);
  const ip2 = /inet (\S+)\//.exec(await d.dockerOk('exec', `i2${id}`, 'ip', '-o', '-4', 'addr', 'show', 'eth0'))![1]!;
  t.is((await d.docker('exec', `i1${id}`, 'ping', '-c', '2', '-W', '5', ip2)).code, 0);
  t.true(host!.view().networks.get([...host!.view().networks.values()].find((n) => n.name === internal)!.id)!.internal);
  await d.dockerOk('rm', '-f', `i1${id}`, `i2${id}`);
  await d.dockerOk('network', 'rm', internal);
});

rt('an endpoint dockerd dropped without DeleteEndpoint (crash, restart) is removed; live ones stay', async (t) => {
  const d = dockerd!;
  const name = `st${id}`;
  const dockerId = (await d.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.216.0.0/24', name)).split('\n').pop()!;
  await d.dockerOk('run', '-d', '--name', `s1${id}`, '--network', name, d.image, 'sleep', '3600');
  const net = host!.backend.findNetwork(dockerId)!;
  // what a dockerd that crashed after CreateEndpoint leaves: an endpoint only kvnet knows
  const ghost = 'f'.repeat(64);
  const { Address } = await host!.driver.requestAddress({ PoolID: net.id, Address: '', Options: null });
  await host!.driver.createEndpoint({ NetworkID: dockerId, EndpointID: ghost, Interface: { Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  const ghostEp = [...host!.view().endpoints.get(net.id)!.values()].find((e) => (e as DockerEndpointRecord).docker?.endpointId === ghost) as DockerEndpointRecord;
  t.truthy(ghostEp);
  t.regex((await run('ip', ['-n', sim!.hosts[0]!.name, 'link', 'show', ghostEp.handoff!])).stdout, /mtu 1450/, 'its handoff interface waits in the host namespace');

  const sync = new DockerNetworkSync({ engine: new DockerEngine(d.socket), node: 'h1', logger: pino({ level: 'silent' }), removeEndpoint: (n, e) => host!.backend.deleteEndpoint(n, e), staleAfterMs: 0 });
  const r = await sync.run(() => host!.view());
  t.deepEqual(r.staleEndpoints, [ghostEp.id]);
  const left = [...(host!.view().endpoints.get(net.id)?.values() ?? [])];
  t.is(left.length, 1, 'the running container keeps its endpoint');
  t.falsy((await host!.ipam.listAllocations(net.poolId)).find((a) => a.ip === ghostEp.ip), 'the address is released');
  t.not((await run('ip', ['-n', sim!.hosts[0]!.name, 'link', 'show', ghostEp.handoff!], { allowFailure: true })).code, 0, 'the interface is gone');
  t.is((await d.docker('exec', `s1${id}`, 'ping', '-c', '1', '-W', '5', '10.216.0.1')).code, 0);
  await d.dockerOk('rm', '-f', `s1${id}`);
  await d.dockerOk('network', 'rm', name);
});

rt('a kvnet network on Docker\'s default IPAM is refused with the fix in the message', async (t) => {
  const r = await dockerd!.docker('network', 'create', '-d', 'kvnet', `${NET}x`);
  t.not(r.code, 0);
  t.regex(r.stderr, /add --ipam-driver kvnet/);
  t.is((await dockerd!.docker('network', 'inspect', `${NET}x`)).code, 1, 'Docker rolled the network back');
});

rt('cross-host: a network created on h1 appears in h2\'s dockerd; containers on both hosts ping each other; rm on h2 removes it everywhere', async (t) => {
  const [d1, d2] = dockerds as [Dockerd, Dockerd];
  const multi = `multi${id}`;
  await d1.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', multi);
  const listed = await waitFor(`${multi} listed on h2`, async () => (await d2.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${multi} kvnet`), 60_000, 200);
  t.true(listed);
  const i1 = JSON.parse(await d1.dockerOk('network', 'inspect', multi))[0];
  const i2 = JSON.parse(await d2.dockerOk('network', 'inspect', multi))[0];
  t.is(i2.IPAM.Config[0].Subnet, i1.IPAM.Config[0].Subnet, 'the same subnet on both hosts');
  t.regex(i2.IPAM.Config[0].Subnet, /^10\.\d+\.\d+\.0\/24$/);
  const net = hosts[0]!.backend.findNetwork(i1.Id)!;
  t.is(hosts[1]!.backend.findNetwork(i2.Id)?.id, net.id, 'both Docker networks are bound to one kvnet network');

  await d1.dockerOk('run', '-d', '--name', `x1${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d2.dockerOk('run', '-d', '--name', `x2${id}`, '--network', multi, d2.image, 'sleep', '3600');
  const ipOf = async (d: Dockerd, c: string) => /inet (\S+)\//.exec(await d.dockerOk('exec', c, 'ip', '-o', '-4', 'addr', 'show', 'eth0'))![1]!;
  const ip1 = await ipOf(d1, `x1${id}`);
  const ip2 = await ipOf(d2, `x2${id}`);
  t.not(ip1, ip2);
  // peers are programmed by each host's reconcile after the other's endpoint shows up in its view
  await waitFor('h2 pings h1', async () => (await d2.docker('exec', `x2${id}`, 'ping', '-c', '1', '-W', '2', ip1)).code === 0, 60_000, 200);
  t.is((await d2.docker('exec', `x2${id}`, 'ping', '-c', '3', '-W', '5', ip1)).code, 0, 'c2 on h2 pings c1 on h1');
  t.is((await d1.docker('exec', `x1${id}`, 'ping', '-c', '3', '-W', '5', ip2)).code, 0, 'and back');

  // five containers at once on each host: ten distinct addresses, all reachable from x2 on h2
  const batch = await Promise.all(
    [d1, d2].flatMap((d, h) => [1, 2, 3, 4, 5].map(async (k) => {
      const name = `y${h + 1}${k}${id}`;
      await d.dockerOk('run', '-d', '--name', name, '--network', multi, d.image, 'sleep', '3600');
      return { d, name, ip: await ipOf(d, name) };
    })),
  );
  t.is(new Set(batch.map((b) => b.ip)).size, 10);
  for (const b of batch) {
    await waitFor(`x2 pings ${b.name}`, async () => (await d2.docker('exec', `x2${id}`, 'ping', '-c', '1', '-W', '2', b.ip)).code === 0, 60_000, 200);
  }
  t.pass('all ten reachable');

  // docker rm -f on h1: its endpoint, address and h2's peer entry go
  const overlayH2 = `${id}2-${net.id}`;
  const neigh = async () => (await run('ip', ['-n', overlayH2, 'neigh', 'show', 'dev', 'vxlan0'])).stdout;
  t.true((await neigh()).includes(`${ip1} `), 'h2 has x1 as a peer');
  await d1.dockerOk('rm', '-f', ...batch.filter((b) => b.d === d1).map((b) => b.name));
  await d2.dockerOk('rm', '-f', ...batch.filter((b) => b.d === d2).map((b) => b.name));
  await d1.dockerOk('rm', '-f', `x1${id}`);
  await waitFor('x1 gone from h2\'s peers', async () => !(await neigh()).includes(`${ip1} `), 30_000, 200);
  t.falsy((await hosts[0]!.ipam.listAllocations(net.poolId)).find((a) => a.ip === ip1), 'its address is released');
  t.false([...(hosts[1]!.view().endpoints.get(net.id)?.values() ?? [])].some((e) => e.ip === ip1));
  await d1.dockerOk('run', '-d', '--name', `x1${id}`, '--network', multi, d1.image, 'sleep', '3600');

  const refused = await d2.docker('network', 'rm', multi);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /active endpoints/);
  await d1.dockerOk('rm', '-f', `x1${id}`);
  await d2.dockerOk('rm', '-f', `x2${id}`);
  await waitFor('endpoints gone', async () => (await stores[0]!.list(`${ENDPOINTS}/${net.id}`)).entries.length === 0, 90_000, 200);
  await d2.dockerOk('network', 'rm', multi);
  t.is(await stores[0]!.get(keys.network(net.id)), undefined);
  await waitFor(`${multi} gone from h1`, async () => !(await d1.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(multi), 60_000, 200);
  t.is(await hosts[0]!.ipam.getPool(net.poolId), undefined);
});

function decodeName(entry: { value: Uint8Array } | undefined): string | undefined {
  return entry ? new TextDecoder().decode(entry.value) : undefined;
}

rt('endpoint names are container names, unique in a network across hosts; a leftover of the same container after a power-off is replaced', async (t) => {
  const [d1, d2] = dockerds as [Dockerd, Dockerd];
  const net = `names${id}`;
  const dockerId = (await d1.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.217.0.0/24',
    '--label', 'team=blue', '--ipam-opt', 'zone=a', '-o', 'com.example.tier=web', net)).split('\n').pop()!;
  await waitFor(`${net} listed on h2`, async () => (await d2.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(net), 60_000, 200);
  // --label and --ipam-opt (which Docker does not send to the plugin) and -o reach the other host's copy
  const copy = JSON.parse(await d2.dockerOk('network', 'inspect', net))[0];
  t.like(copy, { Labels: { team: 'blue' }, Options: { 'com.example.tier': 'web' }, IPAM: { Options: { zone: 'a' } } });
  const kvnetNet = hosts[0]!.backend.findNetwork(dockerId)!;
  const named = async (name: string) => decodeName(await stores[0]!.get(keys.epname(kvnetNet.id, name)));
  const c1 = `n1${id}`;
  await d1.dockerOk('run', '-d', '--name', c1, '--network', net, d1.image, 'sleep', '3600');
  t.truthy(await named(c1), 'the endpoint has its container\'s name as soon as docker run returns');

  const dup = await d2.docker('run', '-d', '--name', c1, '--network', net, d2.image, 'sleep', '3600');
  t.not(dup.code, 0, 'the same name on another host is refused');
  t.regex(dup.stderr, new RegExp(`endpoint with name ${c1} already exists in network ${net}`));
  t.is((await d2.dockerOk('inspect', '-f', '{{.State.Status}}', c1)), 'created', 'the refused container is left created, as with dockerd\'s cluster store');
  const allocated = async () => (await hosts[0]!.ipam.listAllocations(kvnetNet.poolId)).length;
  t.is(await allocated(), 1, 'the refused container\'s address was released');
  await d2.dockerOk('rm', c1);

  // the name is free again once its container is gone
  await d1.dockerOk('rm', '-f', c1);
  await d2.dockerOk('run', '-d', '--name', c1, '--network', net, d2.image, 'sleep', '3600');
  t.truthy(await named(c1));

  // a container with a restart policy survives its dockerd losing power: its old endpoint (same name,
  // same host, never deleted) is replaced when dockerd starts it again, instead of refusing the name
  const r1 = `r1${id}`;
  await d2.dockerOk('run', '-d', '--name', r1, '--restart', 'always', '--network', net, d2.image, 'sleep', '3600');
  const before = await named(r1);
  t.truthy(before);
  await d2.restart('power-off');
  await waitFor(`${r1} running again`, async () => (await d2.dockerOk('inspect', '-f', '{{.State.Status}}', r1)) === 'running', 90_000, 500);
  const after = await named(r1);
  t.truthy(after);
  t.not(after, before, 'a new endpoint holds the name');
  t.is(await stores[0]!.get(keys.endpoint(kvnetNet.id, before!)), undefined, 'the leftover endpoint is gone');
  const ip = /inet (\S+)\//.exec(await d2.dockerOk('exec', r1, 'ip', '-o', '-4', 'addr', 'show', 'eth0'))![1]!;
  const p1 = `p1${id}`;
  await d1.dockerOk('run', '-d', '--name', p1, '--network', net, d1.image, 'sleep', '3600');
  await waitFor(`${r1} on h2 reachable from h1`, async () => (await d1.docker('exec', p1, 'ping', '-c', '1', '-W', '2', ip)).code === 0, 60_000, 200);

  await d1.dockerOk('rm', '-f', p1);
  await d2.dockerOk('rm', '-f', c1, r1);
  await waitFor('endpoints gone', async () => (await stores[0]!.list(`${ENDPOINTS}/${kvnetNet.id}`)).entries.length === 0, 90_000, 500);
  await d1.dockerOk('network', 'rm', net);
});
