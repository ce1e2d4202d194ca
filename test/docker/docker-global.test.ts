/**
 * Issue 6, scenario 6 — Docker's "global" scope: two dockerds 20.10 (Debian's docker.io, the last release
 * that has `--cluster-store`; Docker 23 and later refuse the flag) started with `--cluster-store` on one etcd
 * (v2 API, what dockerd 20.10's libkv speaks) and a real `kvnet agent --docker-plugin --docker-scope
 * global` beside each, the agents sharing the same etcd through its v3 API under a per-run prefix.
 *
 * In this scope dockerd itself shares networks through its cluster store: only the
 * host that runs `docker network create` gets CreateNetwork; every other host's first contact with the
 * network is CreateEndpoint + Join carrying a Docker network id it never saw, which the agent resolves
 * from the kvnet store; endpoint names are unique cluster-wide (dockerd checks them against the store);
 * DeleteNetwork goes only to the host that runs `docker network rm`.
 *
 * Layout: simulated hosts h1, h2 (198.18.0.1-2) and a namespace `<id>kv` on the same underlay at
 * 198.19.0.1 running etcd with `--enable-v2`. Needs root, dockerd, etcd and busybox-static, and an agent
 * that has `--docker-scope`; the tests fail with the reason otherwise.
 */

import test, { type ExecutionContext } from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { canRunDockerd, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { startServer, type KvServer } from '../support/kv-servers.ts';
import { makeTempDir, removeTempDir, run, runId, waitFor, type ManagedProcess } from '../support/process.ts';
import { agentHasFlags, containerIp, kvnetCli, startDockerAgent, waitAgentReady } from '../support/docker-agents.ts';
import { attachNamespace, createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';

/** Where the etcd namespace sits on the underlay (inside 198.18.0.0/15, away from the hosts). */
const ETCD_ADDRESS = '198.19.0.1';
/** dockerd's `--cluster-advertise`: the port only names the node's registration key. */
const DOCKER_ADVERTISE = 'eth0:2376';
const SUBNET = '10.215.0.0/24';
const WAIT_MS = 120_000;

const agentHasGlobalScope = await agentHasFlags('--docker-plugin', '--docker-scope');
const etcdInstalled = (await run('sh', ['-c', 'command -v etcd'], { allowFailure: true })).code === 0;
/** The only engine with `--cluster-store` (docker-engines.ts). */
const ENGINE = '20.10';
const usable = agentHasGlobalScope && etcdInstalled && (await canRunDockerd(ENGINE));
// Never skipped: on a machine without what this needs, every test fails with the reason.
const rt = test.serial;

const id = runId();
const net = `g${id}`;
let sim: SimNetwork | undefined;
let etcd: KvServer | undefined;
let dir = '';
const dockerds: Dockerd[] = [];
const agents: ManagedProcess[] = [];
const sockets: string[] = [];

function kvnet(host: number, ...args: string[]) {
  return kvnetCli(sockets[host]!, ...args);
}

interface NetworkView {
  id: string;
  name: string;
  subnet: string;
  gateway: string;
  endpoints: { name: string; node: string; ip: string }[];
}

async function inspect(host: number, name: string): Promise<NetworkView | undefined> {
  const r = await kvnet(host, 'network', 'inspect', name);
  if (r.code !== 0) return undefined;
  return (JSON.parse(r.stdout) as NetworkView[])[0];
}

async function dockerNetworks(d: Dockerd): Promise<string[]> {
  return (await d.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}} {{.Scope}}')).split('\n');
}

/** The kvnet overlay namespace of network `nid` on host `host` (0-based): `<name prefix>-<nid>`, see startAgent. */
function overlayNetns(host: number, nid: string): string {
  return `${id}${host + 1}-${nid}`;
}

function netnsExists(name: string): boolean {
  return existsSync(`/run/netns/${name}`);
}

/** The last lines of every agent's and dockerd's log, for a failure message. */
function diagnostics(): string {
  const tail = (s: string): string => s.split('\n').slice(-40).join('\n');
  const parts: string[] = [];
  for (const [i, a] of agents.entries()) {
    let log = '';
    try {
      log = readFileSync(a.logFile, 'utf8');
    } catch {
      log = '(no log)';
    }
    parts.push(`--- agent h${i + 1} (${a.logFile})\n${tail(log)}`);
  }
  for (const [i, d] of dockerds.entries()) parts.push(`--- dockerd h${i + 1}\n${tail(d.log())}`);
  return parts.join('\n');
}

/** Runs a test body; on failure logs the agents' and dockerds' last lines before rethrowing. */
async function withDiagnostics(t: ExecutionContext, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    t.log(diagnostics());
    throw err;
  }
  if (!t.passed) t.log(diagnostics());
}

function startAgent(i: number): ManagedProcess {
  return startDockerAgent({ id, dir, index: i, host: sim!.hosts[i]!, dockerd: dockerds[i]!, apiSocket: sockets[i]!, store: etcd!.url(`kvnet-${id}`), extraArgs: ['--docker-scope', 'global'] });
}

const ipOf = containerIp;

test.before(async () => {
  if (!usable) {
    throw new Error(
      `cannot run the Docker global-scope tests: this needs root, dockerd, containerd, runc, busybox-static and etcd (scripts/setup.sh installs them) and an agent with --docker-plugin and --docker-scope (etcd ${etcdInstalled ? 'found' : 'missing'}, agent flags ${agentHasGlobalScope ? 'found' : 'missing'})`,
    );
  }
  dir = makeTempDir(`docker-global-${id}`);
  sim = await createSimNetwork({ hosts: 2, prefix: id });
  // `<id>kv` starts with the sim's prefix, so sim.destroy() removes it too
  await attachNamespace(sim, `${id}kv`, 'pkv', ETCD_ADDRESS);
  etcd = await startServer('etcd', { enableV2: true, netns: `${id}kv`, host: ETCD_ADDRESS });
  for (const [i, h] of sim.hosts.entries()) {
    const d = await startDockerd({ host: h, runId: id, engine: ENGINE, extraArgs: ['--cluster-store', `etcd://${ETCD_ADDRESS}:${etcd.port}`, '--cluster-advertise', DOCKER_ADVERTISE] });
    dockerds.push(d);
    sockets.push(join(dir, `h${i + 1}.sock`));
    agents.push(startAgent(i));
  }
  for (const a of agents) await waitAgentReady(a, 0, WAIT_MS);
});

test.after.always(async () => {
  // dockerds first: their stop removes containers and networks, which needs the plugins and the store
  for (const d of dockerds) await d.stop().catch((err) => console.error('dockerd teardown:', err));
  for (const a of agents) await a.stop(10_000).catch(() => undefined);
  await etcd?.dispose().catch((err) => console.error('etcd teardown:', err));
  // the agents leave the data plane in place by design: remove their overlay namespaces with the run's
  await sim?.destroy().catch(() => undefined);
  if (dir) removeTempDir(dir);
});

rt('global scope: a network created on h1 is listed by h2\'s dockerd, and containers on both hosts ping each other', (t) =>
  withDiagnostics(t, async () => {
    const [d1, d2] = dockerds as [Dockerd, Dockerd];
    await d1.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', SUBNET, net);
    // dockerd's own cluster store, not kvnet's mirroring (off in global scope), makes h2 list it
    t.true((await dockerNetworks(d1)).includes(`${net} kvnet global`), 'h1 lists the network with scope global');
    t.true((await dockerNetworks(d2)).includes(`${net} kvnet global`), 'h2 lists it at once, from the cluster store');
    const dockerId1 = await d1.dockerOk('network', 'inspect', '-f', '{{.Id}}', net);
    t.is(await d2.dockerOk('network', 'inspect', '-f', '{{.Id}}', net), dockerId1, 'one Docker network id cluster-wide');
    // (dockerd shows only the user's IPAM config: no Gateway without --gateway)
    const i2 = JSON.parse(await d2.dockerOk('network', 'inspect', net))[0];
    t.like(i2, { Driver: 'kvnet', Scope: 'global', IPAM: { Driver: 'kvnet' } });
    t.is(i2.IPAM.Config[0]?.Subnet, SUBNET);
    // kvnet learned the Docker name on h1; h2's agent sees the same network in the store
    await waitFor(`${net} named in kvnet on h2`, async () => (await inspect(1, net)) !== undefined, WAIT_MS, 500);
    t.like(await inspect(1, net), { subnet: SUBNET, gateway: '10.215.0.1' });

    // h2 first: its agent never got CreateNetwork and must resolve the Docker id from the store
    await d2.dockerOk('run', '-d', '--name', `c2${id}`, '--network', net, d2.image, 'sleep', '3600');
    await d1.dockerOk('run', '-d', '--name', `c1${id}`, '--network', net, d1.image, 'sleep', '3600');
    const ip1 = await ipOf(d1, `c1${id}`);
    const ip2 = await ipOf(d2, `c2${id}`);
    t.not(ip1, ip2, 'addresses are unique across hosts');
    t.regex(await d2.dockerOk('exec', `c2${id}`, 'ip', 'link', 'show', 'eth0'), /mtu 1450/);
    await waitFor('c2 (h2) pings c1 (h1)', async () => (await d2.docker('exec', `c2${id}`, 'ping', '-c', '1', '-W', '2', ip1)).code === 0, WAIT_MS, 200);
    const back = await d1.docker('exec', `c1${id}`, 'ping', '-c', '3', '-W', '5', ip2);
    t.is(back.code, 0, `c1 (h1) pings c2 (h2) back: ${back.stdout}${back.stderr}`);

    // both endpoints in kvnet, on their hosts, under their container names (learned from each dockerd)
    await waitFor('container names in kvnet network inspect', async () => {
      const eps = (await inspect(0, net))?.endpoints ?? [];
      return eps.some((e) => e.name === `c1${id}`) && eps.some((e) => e.name === `c2${id}`);
    }, WAIT_MS, 500);
    // each agent built the network's overlay namespace, h2's on its first CreateEndpoint
    const nid = (await inspect(0, net))!.id;
    for (const host of [0, 1]) t.true(netnsExists(overlayNetns(host, nid)), `overlay namespace ${overlayNetns(host, nid)} on h${host + 1}`);
    for (const host of [0, 1]) {
      const eps = (await inspect(host, net))!.endpoints.map((e) => ({ name: e.name, node: e.node, ip: e.ip }));
      t.deepEqual(eps, [
        { name: `c1${id}`, node: 'h1', ip: ip1 },
        { name: `c2${id}`, node: 'h2', ip: ip2 },
      ], `kvnet network inspect on h${host + 1}`);
    }
  }),
);

rt('global scope: a container named like one on the other host is refused by dockerd', (t) =>
  withDiagnostics(t, async () => {
    const [d1, d2] = dockerds as [Dockerd, Dockerd];
    t.is(await d1.dockerOk('inspect', '-f', '{{.State.Running}}', `c1${id}`), 'true', 'c1 runs on h1 (from the previous test)');
    const clash = await d2.docker('run', '-d', '--name', `c1${id}`, '--network', net, d2.image, 'sleep', '3600');
    t.not(clash.code, 0, 'docker run of a second c1 on h2 fails');
    t.regex(clash.stderr, new RegExp(`endpoint with name c1${id} already exists in network ${net}`));
    // dockerd leaves the refused container in "Created" state; it never reached kvnet
    await d2.dockerOk('rm', '-f', `c1${id}`);
    t.deepEqual((await inspect(0, net))!.endpoints.map((e) => e.name), [`c1${id}`, `c2${id}`], 'no third endpoint in kvnet');
    t.is(await d1.dockerOk('inspect', '-f', '{{.State.Running}}', `c1${id}`), 'true', 'the original c1 still runs');
  }),
);

rt('global scope: docker network rm on the host that did not create it removes it everywhere and releases its pool', (t) =>
  withDiagnostics(t, async () => {
    const [d1, d2] = dockerds as [Dockerd, Dockerd];
    await d1.dockerOk('rm', '-f', `c1${id}`);
    await d2.dockerOk('rm', '-f', `c2${id}`);
    await waitFor('both endpoints gone from kvnet', async () => (await inspect(0, net))?.endpoints.length === 0, WAIT_MS, 500);
    const nid = (await inspect(0, net))!.id;
    await d2.dockerOk('network', 'rm', net);
    for (const [i, d] of [d1, d2].entries()) {
      t.false((await dockerNetworks(d)).some((l) => l.startsWith(`${net} `)), `gone from h${i + 1}'s dockerd`);
    }
    // h1's agent never got DeleteNetwork (dockerd sends it only on the host running rm): it follows the store
    for (const host of [0, 1]) {
      await waitFor(`${net} gone from kvnet on h${host + 1}`, async () => {
        const ls = await kvnet(host, 'network', 'ls');
        if (ls.code !== 0) throw new Error(`kvnet network ls on h${host + 1} exited ${ls.code}: ${ls.stderr}`);
        return !ls.stdout.includes(net);
      }, WAIT_MS, 500);
    }
    // no kernel state of the network is left on either host
    for (const host of [0, 1]) {
      await waitFor(`overlay namespace ${overlayNetns(host, nid)} removed on h${host + 1}`, () => !netnsExists(overlayNetns(host, nid)), WAIT_MS, 200);
    }
    // the subnet is free again: kvnet's IPAM refuses an overlapping pool while the old one is held
    const probe = `p${id}`;
    const created = await kvnet(0, 'network', 'create', '--subnet', SUBNET, probe);
    t.is(created.code, 0, `a new network on ${SUBNET} after the rm: ${created.stderr}`);
    const removed = await kvnet(0, 'network', 'rm', probe);
    t.is(removed.code, 0, `kvnet network rm ${probe}: ${removed.stderr}`);
  }),
);
