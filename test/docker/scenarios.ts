/**
 * The Docker scenarios with real `kvnet agent --docker-plugin` processes and real dockerds on two
 * simulated hosts sharing one embedded store, for one Docker Engine. Each test file under test/docker
 * calls {@link registerDockerScenarios} once with its engine and the scenarios it runs, so ava runs the
 * files in parallel processes; inside a file the scenarios run serially on one pair of hosts, and each
 * removes its own containers and networks:
 *
 * - `demo`, the seeds' demo: `docker network create -d kvnet --ipam-driver kvnet multi` on h1, `multi`
 *   listed on h2 (issue 6, scenario 1: made on one host, visible on the others), containers on both
 *   hosts pinging each other, `kvnet network ls` showing it, the agent restarted under a running ping,
 *   Docker's calls with the agent down, a network made with `kvnet network create` appearing in both
 *   dockerds, and `docker network rm` on h1 removing it on h2 too;
 * - `options` (scenario 2): `--subnet --ip-range --aux-address` honoured on both hosts, mirrored into
 *   h2's dockerd, `--ip` given once cluster-wide; `internal`: `--internal` gives containers no default
 *   route but still one network across the hosts;
 * - `concurrent` (scenario 3): 20 concurrent `docker run` (10 per host): 20 distinct addresses, all
 *   reachable across the hosts;
 * - `rm` (scenario 4): `docker rm -f` on h2: endpoint record, address and h1's kernel peer entries all go;
 * - `rm-refused`: `docker network rm` and `prune` on h1 while h2 has a container on the network: dockerd
 *   removes its copy whatever the plugin answers, kvnet puts it back at once with the reason as a label;
 * - `power-off`, `crash`: dockerd killed with its containers or alone, neither sending the plugin
 *   anything: the restarted dockerd's own sandbox clean-up (Leave + DeleteEndpoint) leaves the same clean
 *   state; `hidden-plugin`: a power-off while dockerd cannot reach the plugin on its way back, so it
 *   drops the endpoint without telling kvnet: the agent's stale-endpoint sync (DockerNetworkSync) cleans up.
 *
 * Needs root, the engine's dockerd (docker-engines.ts), busybox-static, and an agent that has
 * `--docker-plugin`; the tests fail with the reason otherwise (never skipped).
 */

import test, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { overlayNetnsName } from '@kvnet/dataplane';
import { dockerdUnusable, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { dockerEngine, type DockerEngineName } from '../support/docker-engines.ts';
import { makeTempDir, removeTempDir, run, runId, waitFor, type ManagedProcess } from '../support/process.ts';
import { createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';
import { agentHasFlags, containerIp, kvnetCli, startDockerAgent, waitAgentReady } from '../support/docker-agents.ts';

/** How long a cluster-wide effect (mirroring, peers, clean-up) may take on a loaded 2-core machine. */
const CONVERGE_MS = 120_000;
/**
 * The agent removes an endpoint dockerd dropped without DeleteEndpoint once it is older than
 * STALE_ENDPOINT_GRACE_MS (60 s, not settable from the command line), on a sync that runs at least
 * every PERIODIC_APPLY_MS (30 s): up to ~90 s, plus a loaded machine's slack.
 */
const STALE_CLEANUP_MS = 240_000;
const CONCURRENT_PER_HOST = 10;

const id = runId();
let sim: SimNetwork | undefined;
let dir = '';
const dockerds: Dockerd[] = [];
const agents: ManagedProcess[] = [];
const sockets: string[] = [];
/** Docker networks a test created on h1 (removed in teardown if a test failed half-way). */
const networksMade: string[] = [];

interface KvnetEndpoint {
  id: string;
  name: string;
  node: string;
  ip: string;
  mac: string;
  address: string;
}
interface KvnetNetwork {
  id: string;
  name: string;
  endpoints: KvnetEndpoint[];
}

function kvnet(host: number, ...args: string[]) {
  return kvnetCli(sockets[host]!, ...args);
}

/** `kvnet network inspect NAME` through host `host`'s agent; undefined when kvnet has no such network. */
async function kvnetInspect(host: number, name: string): Promise<KvnetNetwork | undefined> {
  const r = await kvnet(host, 'network', 'inspect', name);
  if (r.code !== 0) {
    if (/not found|no such|unknown network/i.test(r.stderr)) return undefined;
    throw new Error(`kvnet network inspect ${name} on h${host + 1} exited ${r.code}: ${r.stderr.trim()}`);
  }
  const n = (JSON.parse(r.stdout) as Array<Omit<KvnetNetwork, 'endpoints'> & { endpoints?: KvnetEndpoint[] | Record<string, KvnetEndpoint> }>)[0];
  if (!n) return undefined;
  const endpoints = Array.isArray(n.endpoints) ? n.endpoints : Object.values(n.endpoints ?? {});
  return { ...n, endpoints };
}

/** What vxlan0 in host `host`'s overlay namespace of kvnet network `nid` holds (as test/support/cluster.ts reads it). */
async function kernelPeers(host: number, nid: string): Promise<{ exists: boolean; neigh: Array<{ ip: string; mac: string }>; fdb: Array<{ mac: string; dst: string }> }> {
  const ns = overlayNetnsName(`${id}${host + 1}`, nid);
  if (!existsSync(join('/run/netns', ns))) return { exists: false, neigh: [], fdb: [] };
  const n = await run('ip', ['-n', ns, '-j', 'neigh', 'show', 'dev', 'vxlan0'], { allowFailure: true });
  const f = await run('bridge', ['-n', ns, '-j', 'fdb', 'show', 'dev', 'vxlan0'], { allowFailure: true });
  const parse = <T>(s: string): T[] => (s.trim() ? (JSON.parse(s) as T[]) : []);
  return {
    exists: true,
    neigh: parse<{ dst?: string; lladdr?: string }>(n.stdout).filter((e) => e.dst && e.lladdr).map((e) => ({ ip: e.dst!, mac: e.lladdr!.toLowerCase() })),
    fdb: parse<{ mac?: string; dst?: string }>(f.stdout).filter((e) => e.mac && e.dst).map((e) => ({ mac: e.mac!.toLowerCase(), dst: e.dst! })),
  };
}

/** True when host `host`'s kernel has a neighbour or FDB entry for `ep` in the network's overlay. */
async function hasPeer(host: number, nid: string, ep: { ip: string; mac: string }): Promise<boolean> {
  const p = await kernelPeers(host, nid);
  const mac = ep.mac.toLowerCase();
  return p.neigh.some((e) => e.ip === ep.ip || e.mac === mac) || p.fdb.some((e) => e.mac === mac);
}

function startAgent(i: number): ManagedProcess {
  return startDockerAgent({ id, dir, index: i, host: sim!.hosts[i]!, dockerd: dockerds[i]!, apiSocket: sockets[i]!, store: `local://${dir}/store.db` });
}

const h1 = (): Dockerd => dockerds[0]!;
const h2 = (): Dockerd => dockerds[1]!;

/** The container's address on its (single) network, from dockerd. */
async function ipOf(d: Dockerd, container: string): Promise<string> {
  const ip = await d.dockerOk('inspect', '--format', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', container);
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip)) throw new Error(`container ${container} on ${d.host.name} has no IPv4 address (got "${ip}")`);
  return ip;
}

async function runContainer(d: Dockerd, name: string, network: string, ...extra: string[]): Promise<void> {
  await d.dockerOk('run', '-d', '--name', name, '--network', network, ...extra, d.image, 'sleep', '3600');
}

/** `docker network create` on h1, then waits for kvnet to mirror it into h2's dockerd. Returns the kvnet network. */
async function createNetwork(name: string, ...options: string[]): Promise<KvnetNetwork> {
  networksMade.push(name);
  await h1().dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', ...options, name);
  await waitFor(`${name} mirrored into h2's dockerd`, async () => (await h2().dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${name} kvnet`), CONVERGE_MS, 250);
  return waitFor(`${name} named in kvnet`, () => kvnetInspect(0, name), CONVERGE_MS, 250);
}

/** Removes the containers on both hosts and the network (from h1; kvnet removes it from h2), and waits for it to be gone everywhere. */
async function removeAll(network: string, containers: ReadonlyArray<[Dockerd, string]>): Promise<void> {
  for (const [d, c] of containers) await d.docker('rm', '-f', c);
  await h1().dockerOk('network', 'rm', network);
  await waitFor(`${network} gone from h2's dockerd`, async () => !(await h2().dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(network), CONVERGE_MS, 250);
  await waitFor(`${network} gone from kvnet`, async () => (await kvnetInspect(0, network)) === undefined, CONVERGE_MS, 250);
  networksMade.splice(networksMade.indexOf(network), 1);
}

async function pingable(d: Dockerd, from: string, ip: string): Promise<boolean> {
  return (await d.docker('exec', from, 'ping', '-c', '1', '-W', '2', ip)).code === 0;
}

/** Every address pingable from `from`, each retried until it answers (peers may still be programmed). */
async function assertPingsAll(t: ExecutionContext, d: Dockerd, from: string, ips: readonly string[]): Promise<void> {
  for (const ip of ips) {
    const ok = await waitFor(`${from} on ${d.host.name} pings ${ip}`, () => pingable(d, from, ip), CONVERGE_MS, 250).catch((err: Error) => {
      t.fail(err.message);
      return false;
    });
    if (ok) t.pass();
  }
}


/** The seeds' demo (see the file's header). */
async function seedsDemo(t: ExecutionContext): Promise<void> {
  const [d1, d2] = dockerds as [Dockerd, Dockerd];
  const multi = `multi${id}`;
  await d1.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.214.0.0/24', multi);
  await waitFor(`${multi} listed on h2`, async () => (await d2.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${multi} kvnet`), 60_000, 200);
  const ls = await kvnet(1, 'network', 'ls');
  t.regex(ls.stdout, new RegExp(`${multi}\\s`), 'kvnet network ls on h2 shows it under its Docker name');
  const i2 = JSON.parse(await d2.dockerOk('network', 'inspect', multi))[0];
  t.like(i2.IPAM.Config[0], { Subnet: '10.214.0.0/24', Gateway: '10.214.0.1' });

  await d1.dockerOk('run', '-d', '--name', `c1${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d2.dockerOk('run', '-d', '--name', `c2${id}`, '--network', multi, d2.image, 'sleep', '3600');
  const ipOf = containerIp;
  const ip1 = await ipOf(d1, `c1${id}`);
  const ip2 = await ipOf(d2, `c2${id}`);
  t.not(ip1, ip2);
  t.regex(await d2.dockerOk('exec', `c2${id}`, 'ip', 'link', 'show', 'eth0'), /mtu 1450/);
  // endpoints carry their container names cluster-wide (learned from each host's dockerd)
  await waitFor('container names in kvnet network inspect', async () => {
    const out = (await kvnet(0, 'network', 'inspect', multi)).stdout;
    return out.includes(`c1${id}`) && out.includes(`c2${id}`);
  }, 60_000, 500);
  await waitFor('c2 pings c1', async () => (await d2.docker('exec', `c2${id}`, 'ping', '-c', '1', '-W', '2', ip1)).code === 0, 60_000, 200);
  t.is((await d1.docker('exec', `c1${id}`, 'ping', '-c', '3', '-W', '5', ip2)).code, 0, 'c1 pings c2 back');

  // restarting h1's agent under a running ping between the hosts loses nothing: the data plane stays
  const ping = d2.docker('exec', `c2${id}`, 'ping', '-c', '50', '-i', '0.2', '-W', '2', ip1);
  await new Promise((r) => setTimeout(r, 1_000));
  await agents[0]!.stop(10_000);
  const logLength = readFileSync(agents[0]!.logFile, 'utf8').length;
  agents[0] = startAgent(0);
  await waitAgentReady(agents[0], logLength);
  const pinged = await ping;
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(pinged.stdout);
  t.truthy(m, pinged.stdout);
  t.is(m![1], m![2], `no ping lost across the agent restart: ${m![0]}`);
  // and the restarted agent serves Docker again
  await d1.dockerOk('run', '-d', '--name', `c3${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d1.dockerOk('rm', '-f', `c3${id}`);

  // while the agent is down, Docker's calls fail with an error (no hang), the running containers keep
  // their network, and once it is back the same command works
  await agents[0]!.stop(10_000);
  const down = Date.now();
  const failed = await d1.docker('run', '-d', '--name', `c4${id}`, '--network', multi, d1.image, 'sleep', '3600');
  t.log(`docker run with the agent down failed after ${Date.now() - down} ms: ${failed.stderr.trim()}`);
  t.not(failed.code, 0, 'docker run fails while the plugin is down');
  t.regex(failed.stderr, /kvnet|plugin|connect/i, 'the error names the plugin or the connection');
  t.is((await d2.docker('exec', `c2${id}`, 'ping', '-c', '2', '-W', '5', ip1)).code, 0, 'containers keep their network while the agent is down');
  await d1.docker('rm', '-f', `c4${id}`);
  const logLength2 = readFileSync(agents[0]!.logFile, 'utf8').length;
  agents[0] = startAgent(0);
  await waitAgentReady(agents[0], logLength2);
  await d1.dockerOk('run', '-d', '--name', `c4${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d1.dockerOk('rm', '-f', `c4${id}`);

  // a network made with `kvnet network create` (no Docker involved) appears in both dockerds and carries containers
  const knet = `knet${id}`;
  const made = await kvnet(1, 'network', 'create', '--subnet', '10.218.0.0/24', knet);
  t.is(made.code, 0, made.stderr);
  for (const d of [d1, d2]) {
    await waitFor(`${knet} listed by ${d.host.name}'s dockerd`, async () => (await d.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${knet} kvnet`), 60_000, 200);
  }
  await d1.dockerOk('run', '-d', '--name', `k1${id}`, '--network', knet, d1.image, 'sleep', '3600');
  await d2.dockerOk('run', '-d', '--name', `k2${id}`, '--network', knet, d2.image, 'sleep', '3600');
  const k2 = await ipOf(d2, `k2${id}`);
  t.regex(k2, /^10\.218\.0\./);
  await waitFor('k1 pings k2', async () => (await d1.docker('exec', `k1${id}`, 'ping', '-c', '1', '-W', '2', k2)).code === 0, 60_000, 200);
  await d1.dockerOk('rm', '-f', `k1${id}`);
  await d2.dockerOk('rm', '-f', `k2${id}`);
  await waitFor(`${knet} removable`, async () => (await kvnet(0, 'network', 'rm', knet)).code === 0, 60_000, 500);
  for (const d of [d1, d2]) {
    await waitFor(`${knet} gone from ${d.host.name}'s dockerd`, async () => !(await d.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(knet), 60_000, 200);
  }

  await d1.dockerOk('rm', '-f', `c1${id}`);
  await d2.dockerOk('rm', '-f', `c2${id}`);
  await d1.dockerOk('network', 'rm', multi);
  await waitFor(`${multi} gone from h2`, async () => !(await d2.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(multi), 60_000, 200);
  t.notRegex((await kvnet(0, 'network', 'ls')).stdout, new RegExp(multi));
}

/** Scenario `options` (see the file's header). */
async function networkOptions(t: ExecutionContext): Promise<void> {
  const net = `opt${id}`;
  await createNetwork(net, '--subnet', '172.16.16.0/24', '--aux-address', 'ip2=172.16.16.2', '--ip-range', '172.16.16.128/25');

  const i2 = JSON.parse(await h2().dockerOk('network', 'inspect', net))[0];
  t.is(i2.Driver, 'kvnet');
  t.is(i2.IPAM.Driver, 'kvnet');
  t.like(i2.IPAM.Config[0], { Subnet: '172.16.16.0/24', IPRange: '172.16.16.128/25', AuxiliaryAddresses: { ip2: '172.16.16.2' } }, 'h2 shows the network as h1 made it');

  const containers: Array<[Dockerd, string]> = [];
  for (let i = 0; i < 3; i++) {
    for (const [n, d] of [[1, h1()], [2, h2()]] as const) {
      const c = `o${n}x${i}${id}`;
      await runContainer(d, c, net);
      containers.push([d, c]);
    }
  }
  const ips = await Promise.all(containers.map(([d, c]) => ipOf(d, c)));
  t.log(`addresses: ${ips.join(' ')}`);
  t.is(new Set(ips).size, ips.length, `distinct addresses: ${ips.join(' ')}`);
  for (const ip of ips) {
    const last = Number(ip.split('.')[3]);
    t.true(ip.startsWith('172.16.16.') && last >= 128 && last <= 255, `${ip} is inside --ip-range 172.16.16.128/25`);
    t.not(ip, '172.16.16.2', 'the aux address is never handed out');
  }

  // --ip on h2, then the same address on h1: refused, and nothing left behind by the refusal
  await runContainer(h2(), `ofix2${id}`, net, '--ip', '172.16.16.200');
  containers.push([h2(), `ofix2${id}`]);
  t.is(await ipOf(h2(), `ofix2${id}`), '172.16.16.200');
  const clash = await h1().docker('run', '-d', '--name', `ofix1${id}`, '--network', net, '--ip', '172.16.16.200', h1().image, 'sleep', '3600');
  containers.push([h1(), `ofix1${id}`]);
  t.not(clash.code, 0, 'the same --ip on the other host is refused');
  t.log(`docker run --ip 172.16.16.200 on h1 (already on h2): exit ${clash.code}: ${clash.stderr.trim()}`);
  t.regex(clash.stderr, /172\.16\.16\.200/, 'the error names the address');
  t.regex(clash.stderr, new RegExp(`already in use in network ${net} by ofix2${id} on h2`), 'the error says which container on which host has it');
  // the aux address is reserved in the shared pool, so not even --ip gets it (on the mirroring host either)
  const aux = await h2().docker('run', '-d', '--name', `oaux2${id}`, '--network', net, '--ip', '172.16.16.2', h2().image, 'sleep', '3600');
  containers.push([h2(), `oaux2${id}`]);
  t.not(aux.code, 0, '--ip of the aux address is refused');
  t.log(`docker run --ip 172.16.16.2 (the aux address) on h2: exit ${aux.code}: ${aux.stderr.trim()}`);
  t.regex(aux.stderr, /address 172\.16\.16\.2 is reserved in network \S+ as auxiliary address ip2/, 'the error names the aux address and why');
  const afterClash = await kvnetInspect(0, net);
  t.is(afterClash?.endpoints.length, 7, `only the 7 running containers have endpoints: ${afterClash?.endpoints.map((e) => `${e.name}@${e.node}=${e.ip}`).join(' ')}`);
  t.is(afterClash?.endpoints.filter((e) => e.ip === '172.16.16.200').length, 1);

  // the containers on the two hosts reach each other
  await assertPingsAll(t, h1(), `o1x0${id}`, [ips[1]!, ips[3]!, '172.16.16.200']);
  await assertPingsAll(t, h2(), `o2x0${id}`, [ips[0]!, ips[2]!]);

  await removeAll(net, containers);
}

/** Scenario `internal` (see the file's header). */
async function internalNetwork(t: ExecutionContext): Promise<void> {
  const net = `int${id}`;
  await createNetwork(net, '--internal', '--subnet', '172.16.17.0/24');
  t.true(JSON.parse(await h2().dockerOk('network', 'inspect', net))[0].Internal, 'h2 mirrors --internal');
  const [c1, c2] = [`i1${id}`, `i2${id}`];
  await runContainer(h1(), c1, net);
  await runContainer(h2(), c2, net);
  for (const [d, c] of [[h1(), c1], [h2(), c2]] as const) {
    const links = (await d.dockerOk('exec', c, 'ip', '-o', 'link', 'show')).split('\n').map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1]).filter(Boolean).sort();
    t.deepEqual(links, ['eth0', 'lo'], `${c} on ${d.host.name} has only lo and eth0 (no docker_gwbridge leg)`);
    const routes = await d.dockerOk('exec', c, 'ip', 'route', 'show');
    t.notRegex(routes, /^default/m, `${c} on ${d.host.name} has no default route: ${routes}`);
  }
  const [ip1, ip2] = [await ipOf(h1(), c1), await ipOf(h2(), c2)];
  await assertPingsAll(t, h1(), c1, [ip2]);
  await assertPingsAll(t, h2(), c2, [ip1]);
  await removeAll(net, [[h1(), c1], [h2(), c2]]);
}

/** Scenario `concurrent` (see the file's header). */
async function concurrentRuns(t: ExecutionContext): Promise<void> {
  const net = `par${id}`;
  await createNetwork(net, '--subnet', '172.16.18.0/24');
  const names = (host: number) => Array.from({ length: CONCURRENT_PER_HOST }, (_, i) => `p${host}x${i}${id}`);
  const all: Array<[Dockerd, string]> = [...names(1).map((c) => [h1(), c] as [Dockerd, string]), ...names(2).map((c) => [h2(), c] as [Dockerd, string])];
  const results = await Promise.allSettled(all.map(([d, c]) => runContainer(d, c, net)));
  const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${all[i]![1]}: ${String(r.reason)}`] : []));
  t.deepEqual(failed, [], 'every concurrent docker run succeeds');
  const ips = await Promise.all(all.map(([d, c]) => ipOf(d, c)));
  t.is(new Set(ips).size, all.length, `${all.length} distinct addresses: ${ips.join(' ')}`);
  const kv = await waitFor('every endpoint in kvnet network inspect', async () => {
    const n = await kvnetInspect(0, net);
    return n && n.endpoints.length === all.length ? n : undefined;
  }, CONVERGE_MS, 500);
  t.deepEqual(kv.endpoints.map((e) => e.ip).sort(), [...ips].sort(), 'kvnet holds exactly the addresses dockerd shows');
  const ips1 = ips.slice(0, CONCURRENT_PER_HOST);
  const ips2 = ips.slice(CONCURRENT_PER_HOST);
  await assertPingsAll(t, h2(), names(2)[0]!, ips1);
  await assertPingsAll(t, h1(), names(1)[0]!, ips2);
  await removeAll(net, all);
}

/** Scenario `rm` (see the file's header). */
async function rmCleanup(t: ExecutionContext): Promise<void> {
  const net = `rm${id}`;
  const kv = await createNetwork(net, '--subnet', '172.16.19.0/24');
  const [c1, c2] = [`r1${id}`, `r2${id}`];
  await runContainer(h1(), c1, net);
  await runContainer(h2(), c2, net);
  const ip2 = await ipOf(h2(), c2);
  const ep2 = await waitFor(`${c2}'s endpoint in kvnet`, async () => (await kvnetInspect(0, net))?.endpoints.find((e) => e.ip === ip2), CONVERGE_MS, 250);
  t.is(ep2.node, 'h2');
  await waitFor(`h1's kernel has ${c2} (${ip2} ${ep2.mac}) as a peer`, () => hasPeer(0, kv.id, ep2), CONVERGE_MS, 250);
  await assertPingsAll(t, h1(), c1, [ip2]);

  await h2().dockerOk('rm', '-f', c2);
  await waitFor(`${c2}'s endpoint gone from kvnet network inspect`, async () => !(await kvnetInspect(0, net))?.endpoints.some((e) => e.id === ep2.id || e.ip === ip2), CONVERGE_MS, 250);
  await waitFor(`h1's kernel without a neighbour/FDB entry for ${ip2} ${ep2.mac}`, async () => !(await hasPeer(0, kv.id, ep2)), CONVERGE_MS, 250);
  t.false(await hasPeer(0, kv.id, ep2));
  // h2 has no endpoint left on the network: its overlay namespace (with the veth's bridge end) is gone
  await waitFor(`h2's overlay namespace for ${net} removed`, async () => !(await kernelPeers(1, kv.id)).exists, CONVERGE_MS, 250);

  // the address is free again: a container on h1 gets it with --ip
  await runContainer(h1(), `r3${id}`, net, '--ip', ip2);
  t.is(await ipOf(h1(), `r3${id}`), ip2, 'the released address is given again');
  await removeAll(net, [[h1(), c1], [h1(), `r3${id}`]]);
}

/**
 * One dockerd-restart scenario: a container on h2 (older than the stale grace when `waitGrace`), h2's
 * dockerd restarted `how`, then the clean state: no kvnet endpoint on h2, the address free, h1's
 * kernel without the peer, h2's container not running.
 */
async function dockerdRestartLeavesCleanState(t: ExecutionContext, how: 'power-off' | 'crash', net: string, subnet: string): Promise<void> {
  const kv = await createNetwork(net, '--subnet', subnet);
  const [c1, c2] = [`${how[0]}1${id}`, `${how[0]}2${id}`];
  await runContainer(h1(), c1, net);
  await runContainer(h2(), c2, net);
  const ip2 = await ipOf(h2(), c2);
  const ep2 = await waitFor(`${c2}'s endpoint in kvnet`, async () => (await kvnetInspect(0, net))?.endpoints.find((e) => e.ip === ip2), CONVERGE_MS, 250);
  await waitFor(`h1's kernel has ${c2} (${ip2}) as a peer`, () => hasPeer(0, kv.id, ep2), CONVERGE_MS, 250);
  await assertPingsAll(t, h1(), c1, [ip2]);

  const agentLogBefore = agents[1]!.log().length;
  const restartedAt = Date.now();
  await h2().restart(how);
  t.log(`h2's dockerd back after restart('${how}') in ${Date.now() - restartedAt} ms`);

  await waitFor(`${c2}'s endpoint removed from kvnet after restart('${how}')`, async () => !(await kvnetInspect(0, net))?.endpoints.some((e) => e.id === ep2.id), STALE_CLEANUP_MS, 1_000);
  const agentLog = agents[1]!.log().slice(agentLogBefore);
  const bySync = agentLog.includes('dockerd no longer has this endpoint');
  t.log(`restart('${how}'): endpoint removed ${Date.now() - restartedAt} ms after the restart began, by ${bySync ? 'the agent\'s stale-endpoint sync' : 'dockerd\'s own DeleteEndpoint'}`);
  await waitFor(`h1's kernel without a peer entry for ${ip2} ${ep2.mac}`, async () => !(await hasPeer(0, kv.id, ep2)), CONVERGE_MS, 250);
  t.false(await hasPeer(0, kv.id, ep2), 'h1 forgot the peer');
  await waitFor(`h2's overlay namespace for ${net} removed`, async () => !(await kernelPeers(1, kv.id)).exists, CONVERGE_MS, 250);
  t.is(await h2().dockerOk('inspect', '--format', '{{.State.Running}}', c2), 'false', `${c2} does not run after restart('${how}') (no restart policy)`);
  const left = (await kvnetInspect(0, net))?.endpoints ?? [];
  t.deepEqual(left.map((e) => e.node), ['h1'], `only h1's endpoint is left: ${left.map((e) => `${e.name}@${e.node}=${e.ip}`).join(' ')}`);

  // the address is free again, and h2's dockerd still serves the network
  await runContainer(h1(), `${how[0]}3${id}`, net, '--ip', ip2);
  t.is(await ipOf(h1(), `${how[0]}3${id}`), ip2, 'the address of the dropped endpoint is given again');
  await h2().dockerOk('start', c2);
  const ip2b = await ipOf(h2(), c2);
  t.not(ip2b, ip2);
  await assertPingsAll(t, h2(), c2, [await ipOf(h1(), c1)]);
  await removeAll(net, [[h1(), c1], [h1(), `${how[0]}3${id}`], [h2(), c2]]);
}

/** Scenario `hidden-plugin` (see the file's header). */
async function powerOffWithoutPlugin(t: ExecutionContext): Promise<void> {
  // A restarted dockerd normally cleans up its dead sandboxes itself (Leave + DeleteEndpoint, as the
  // tests above show). Here the plugin socket is out of dockerd's sight during the restart, so that
  // clean-up cannot reach kvnet and dockerd drops the endpoint without telling it: only the agent's
  // DockerNetworkSync (endpoint older than STALE_ENDPOINT_GRACE_MS and not listed by dockerd) can remove it.
  const net = `hid${id}`;
  const kv = await createNetwork(net, '--subnet', '172.16.22.0/24');
  const [c1, c2] = [`h1${id}`, `h2${id}`];
  await runContainer(h1(), c1, net);
  await runContainer(h2(), c2, net);
  const ip2 = await ipOf(h2(), c2);
  const ep2 = await waitFor(`${c2}'s endpoint in kvnet`, async () => (await kvnetInspect(0, net))?.endpoints.find((e) => e.ip === ip2), CONVERGE_MS, 250);
  await waitFor(`h1's kernel has ${c2} (${ip2}) as a peer`, () => hasPeer(0, kv.id, ep2), CONVERGE_MS, 250);

  const socket = join(h2().pluginDir, 'kvnet.sock');
  const hidden = join(h2().pluginDir, 'hidden-from-dockerd');
  const agentLogBefore = agents[1]!.log().length;
  const restartedAt = Date.now();
  renameSync(socket, hidden); // same inode: the agent keeps serving it, and still owns it on stop
  let restartError: unknown;
  try {
    await h2().restart('power-off');
  } catch (err) {
    restartError = err; // dockerd may take longer than restart()'s wait while it retries the missing plugin
  }
  try {
    await waitFor('h2\'s dockerd answering after the power-off', async () => (await h2().docker('version', '--format', '{{.Server.Version}}')).code === 0, 300_000, 1_000);
  } finally {
    renameSync(hidden, socket);
  }
  t.log(`h2's dockerd answered ${Date.now() - restartedAt} ms after restart('power-off') without its plugin${restartError ? ` (restart() gave up waiting: ${String(restartError)})` : ''}`);
  t.true(existsSync(socket));

  await waitFor(`${c2}'s endpoint removed from kvnet by the stale-endpoint sync`, async () => !(await kvnetInspect(0, net))?.endpoints.some((e) => e.id === ep2.id), STALE_CLEANUP_MS, 1_000);
  t.log(`endpoint removed ${Date.now() - restartedAt} ms after the power-off`);
  t.regex(agents[1]!.log().slice(agentLogBefore), /dockerd no longer has this endpoint/, 'the agent\'s sync removed it (not a DeleteEndpoint from dockerd)');
  await waitFor(`h1's kernel without a peer entry for ${ip2} ${ep2.mac}`, async () => !(await hasPeer(0, kv.id, ep2)), CONVERGE_MS, 250);
  t.false(await hasPeer(0, kv.id, ep2), 'h1 forgot the peer');
  await waitFor(`h2's overlay namespace for ${net} removed`, async () => !(await kernelPeers(1, kv.id)).exists, CONVERGE_MS, 250);
  await runContainer(h1(), `h3${id}`, net, '--ip', ip2);
  t.is(await ipOf(h1(), `h3${id}`), ip2, 'the address of the dropped endpoint is given again');
  await removeAll(net, [[h1(), c1], [h1(), `h3${id}`], [h2(), c2]]);
}

/**
 * Scenario `rm-refused` (issue 13 item 4): `docker network rm` and `docker network prune` on h1 while a
 * container on h2 uses the network. dockerd ignores a remote driver's refusal and removes its copy (the
 * command prints success), so kvnet puts the network back into h1's dockerd at once, labelled with the
 * reason, and nothing else changes: kvnet still has it, h2's container keeps its endpoint, h1 can run a
 * container on it again and reach h2.
 */
async function removalRefused(t: ExecutionContext): Promise<void> {
  const net = `rf${id}`;
  await createNetwork(net, '--subnet', '172.16.22.0/24');
  const c2 = `f2${id}`;
  await runContainer(h2(), c2, net);
  const ip2 = await ipOf(h2(), c2);
  await waitFor(`${c2}'s endpoint in kvnet`, async () => (await kvnetInspect(0, net))?.endpoints.some((e) => e.ip === ip2), CONVERGE_MS, 250);
  const listedOnH1 = async (): Promise<boolean> => (await h1().dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(net);
  for (const how of [['network', 'rm', net], ['network', 'prune', '-f']]) {
    const started = Date.now();
    const r = await h1().docker(...how);
    t.is(r.code, 0, `docker ${how.join(' ')} reports success (dockerd ignores a remote driver's refusal): ${r.stderr}`);
    await waitFor(`${net} back in h1's dockerd after docker ${how[1]}`, listedOnH1, CONVERGE_MS, 20);
    t.log(`docker ${how.join(' ')}: ${net} back in h1's dockerd ${Date.now() - started} ms after the command was issued`);
    const label = await h1().dockerOk('network', 'inspect', '--format', '{{index .Labels "kvnet.removal-refused"}}', net);
    if (!label) t.log(`docker network inspect ${net} on h1: ${await h1().dockerOk('network', 'inspect', net)}\nh1's agent:\n${agents[0]!.log().split('\n').filter((l) => l.includes(net) || /refus|dockerd|put/i.test(l)).slice(-30).join('\n')}`);
    t.regex(label, new RegExp(`docker network rm refused: network ${net} has active endpoints: ${c2} \\(on h2\\)`), 'the reason is on the network Docker shows');
    t.truthy(await kvnetInspect(0, net), 'kvnet still has the network');
    t.true((await kvnetInspect(1, net))?.endpoints.some((e) => e.ip === ip2), `${c2} keeps its endpoint`);
  }
  // the network works on h1 again: a new container there reaches h2's
  const c1 = `f1${id}`;
  await runContainer(h1(), c1, net);
  await assertPingsAll(t, h1(), c1, [ip2]);
  await removeAll(net, [[h1(), c1], [h2(), c2]]);
}

/** Every scenario by name: its test title and body. */
const SCENARIOS = {
  demo: { title: 'the seeds\' demo: one docker network on two hosts through two kvnet agents', run: seedsDemo },
  options: { title: 'network options: --subnet, --ip-range, --aux-address on both hosts, --ip once cluster-wide', run: networkOptions },
  internal: { title: '--internal: only eth0 and no default route in the containers, still one network across the hosts', run: internalNetwork },
  concurrent: { title: `${CONCURRENT_PER_HOST} concurrent docker run on each host: distinct addresses, all reachable from the other host`, run: concurrentRuns },
  rm: { title: 'docker rm -f on h2: endpoint record, address and h1\'s kernel peer entries all go', run: rmCleanup },
  'rm-refused': { title: 'docker network rm / prune on h1 while h2 has a container: the network is back in h1\'s dockerd at once, with the reason on it', run: removalRefused },
  'power-off': { title: 'dockerd power-off on h2 (containers killed, nothing sent): endpoint, address and h1\'s peers cleaned up', run: (t: ExecutionContext) => dockerdRestartLeavesCleanState(t, 'power-off', `pow${id}`, '172.16.20.0/24') },
  crash: { title: 'dockerd crash on h2 (dockerd alone killed; the restarted one stops the containers): the same clean state', run: (t: ExecutionContext) => dockerdRestartLeavesCleanState(t, 'crash', `cra${id}`, '172.16.21.0/24') },
  'hidden-plugin': { title: 'dockerd power-off on h2 while it cannot reach the plugin: the agent\'s stale-endpoint sync cleans up', run: powerOffWithoutPlugin },
} as const;
export type DockerScenario = keyof typeof SCENARIOS;

let registered = false;

/**
 * Registers the hooks (two simulated hosts, a dockerd of `engine` and a kvnet agent on each) and the
 * `scenarios`, in the order given, as serial tests titled `[Docker <engine>] <scenario>`. Once per test file.
 */
export function registerDockerScenarios(options: { label: string; engine?: DockerEngineName; scenarios: readonly DockerScenario[] }): void {
  if (registered) throw new Error('registerDockerScenarios: once per test file (the scenarios share one pair of hosts)');
  registered = true;
  const engine = dockerEngine(options.engine).name;
  // Never skipped: on a machine without what this needs, every test fails with the reason.
  const rt = test.serial;

  test.before(async () => {
    const hasPlugin = await agentHasFlags('--docker-plugin');
    const unusable = await dockerdUnusable(engine);
    if (!hasPlugin || unusable) {
      throw new Error(`cannot run the Docker tests on ${engine}: ${unusable || 'the agent has no --docker-plugin'} (scripts/setup.sh installs what they need)`);
    }
    dir = makeTempDir(`${options.label}-${id}`);
    sim = await createSimNetwork({ hosts: 2, prefix: id });
    for (const [i, h] of sim.hosts.entries()) {
      const d = await startDockerd({ host: h, runId: id, engine });
      dockerds.push(d);
      sockets.push(join(dir, `h${i + 1}.sock`));
      agents.push(startAgent(i));
    }
    for (const a of agents) await waitAgentReady(a);
  });

  test.after.always(async () => {
    // containers first (their endpoints hold the networks), then networks left by a failed test, while the agents still answer
    for (const d of dockerds) {
      const ids = (await d.docker('ps', '-aq')).stdout.split('\n').filter(Boolean);
      if (ids.length) await d.docker('rm', '-f', ...ids);
    }
    for (const n of networksMade) await dockerds[0]?.docker('network', 'rm', n);
    for (const d of dockerds) await d.stop().catch((err) => console.error('dockerd teardown:', err));
    for (const a of agents) await a.stop(10_000).catch(() => undefined);
    // the agents leave the data plane in place by design: their overlay namespaces go with the run's prefix
    await sim?.destroy().catch(() => undefined);
    if (dir) removeTempDir(dir);
  });

  for (const name of options.scenarios) {
    const s = SCENARIOS[name];
    rt(`[Docker ${engine}] ${s.title}`, (t) => s.run(t));
  }
}
