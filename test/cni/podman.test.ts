/**
 * The proof with real runtimes: three simulated hosts with real agents on one embedded store;
 * rootful podman (CNI backend, the `kvnet` plugin installed by scripts/install-cni.sh, `portmap` chained)
 * on h1 and h2, and a real dockerd with kvnet's Docker plugin on h3 — Docker Engine 28.5.2 from
 * /var/cache/kvnet when scripts/install-docker.sh has built it, else Debian's 20.10 (the test logs which).
 * One kvnet network, made with `kvnet network create`:
 *
 * - podman containers on h1 and h2 and a Docker container on h3 ping each other, and reach outside;
 * - a second podman container of the same name on another host is refused (names are unique across hosts);
 * - `podman run --ip` gets that address; podman shows the overlay address as the container's;
 * - `podman rm -f` releases the address (it is handed out again) and removes the peer everywhere;
 * - `podman run -p` publishes a port through the chained portmap plugin (reached from outside the hosts);
 * - a killed host (agent SIGKILLed, podman's container processes and network namespaces gone) has its
 *   podman endpoints reaped by the survivors, peers removed everywhere.
 */

import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, type ClusterHost } from '../support/cluster.ts';
import { startDockerAgent, waitAgentReady, kvnetCli } from '../support/docker-agents.ts';
import { canRunDockerd, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { makeTempDir, run, waitFor, type ManagedProcess } from '../support/process.ts';
import { installPlugin, missingCniTools, removeCniCache, startPodmanHost, writeConflist, type PodmanHost } from './support.ts';

const SUBNET = '10.96.1.0/24';
const PUBLISHED_PORT = 18081;

const missing = missingCniTools({ podman: true });

interface Setup {
  cluster: Cluster;
  dir: string;
  net: string;
  netconf: string;
  dockerd: Dockerd;
  h3Agent: ManagedProcess;
  h3Socket: string;
  podman: Map<string, PodmanHost>;
  engine: string;
}

let setup: Setup | undefined;

test.before(async (t) => {
  if (missing.length > 0) return;
  if (!(await canRunDockerd())) return;
  const cluster = await Cluster.create({ backend: 'local', hosts: 3, outside: true, startAgents: false });
  const podman = new Map<string, PodmanHost>();
  let dockerd: Dockerd | undefined;
  let h3Agent: ManagedProcess | undefined;
  try {
    const [h1, h2, h3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
    const dir = makeTempDir(`cni-podman-${cluster.id}`);
    const { binDir } = await installPlugin(dir);
    await Promise.all([cluster.startAgent(h1), cluster.startAgent(h2)]);
    dockerd = await startDockerd({ host: h3, runId: cluster.id });
    const engine = (await dockerd.dockerOk('version', '--format', '{{.Server.Version}}')).trim();
    t.log(`dockerd on h3: Docker Engine ${engine}`);
    const h3Socket = join(dir, 'h3.sock');
    h3Agent = startDockerAgent({ id: cluster.id, dir, index: 2, host: h3, dockerd, apiSocket: h3Socket, store: cluster.storeUrl });
    await waitAgentReady(h3Agent);
    const net = `multi${cluster.id}`;
    await cluster.kvnetOk(h1, 'network', 'create', '--subnet', SUBNET, net);
    const netconf = `kvnet${cluster.id}`;
    for (const h of [h1, h2]) {
      const p = await startPodmanHost({ hostNs: h.name, runId: cluster.id, pluginDirs: [binDir] });
      podman.set(h.node, p);
      writeConflist(p.confDir, { name: netconf, cniVersion: '1.0.0', kvnet: { network: net, socket: h.socket }, chain: [{ type: 'portmap', capabilities: { portMappings: true } }] });
    }
    await waitFor(`${net} in h3's dockerd`, async () => (await dockerd!.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${net} kvnet`), 60_000, 200);
    setup = { cluster, dir, net, netconf, dockerd, h3Agent, h3Socket, podman, engine };
  } catch (err) {
    for (const p of podman.values()) await p.stop().catch(() => undefined);
    await dockerd?.stop().catch(() => undefined);
    await h3Agent?.stop().catch(() => undefined);
    await cluster.teardown();
    throw err;
  }
});

test.after.always(async () => {
  if (!setup) return;
  const { cluster, podman, dockerd, h3Agent, netconf } = setup;
  // podman's DELs need live agents: bring back any the test killed
  for (const h of cluster.hosts.slice(0, 2)) if (h.alive && !cluster.agentRunning(h)) await cluster.startAgent(h).catch(() => undefined);
  for (const p of podman.values()) await p.stop().catch(() => undefined);
  await dockerd.stop().catch(() => undefined);
  await h3Agent.stop().catch(() => undefined);
  removeCniCache([netconf]);
  await cluster.teardown();
});

const skipReason = (): string | undefined => (missing.length > 0 ? `missing: ${missing.join('; ')}` : setup ? undefined : 'dockerd cannot run here (root, dockerd, docker, containerd, runc, static busybox)');

async function podmanIp(p: PodmanHost, container: string, netconf: string): Promise<string> {
  return p.podmanOk('inspect', '--format', `{{(index .NetworkSettings.Networks "${netconf}").IPAddress}}`, container);
}

async function podmanPing(p: PodmanHost, container: string, ip: string): Promise<boolean> {
  return (await p.podman('exec', container, 'ping', '-c', '1', '-W', '1', ip)).code === 0;
}

async function endpoints(): Promise<Array<{ name: string; node: string; ip: string; mac: string }>> {
  const r = await kvnetCli(setup!.h3Socket, 'network', 'inspect', setup!.net);
  if (r.code !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout) as Array<{ endpoints: Array<{ name: string; node: string; ip: string; mac: string }> }>)[0]!.endpoints;
}

test.serial('podman on h1 and h2 and Docker on h3 share one kvnet network: all ping each other; rm -f releases the address and the peers; -p publishes a port', async (t) => {
  const skip = skipReason();
  if (skip) return t.fail(skip);
  const { cluster, dockerd, net, netconf, podman } = setup!;
  const [h1, h2, h3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
  const p1 = podman.get('h1')!;
  const p2 = podman.get('h2')!;
  const id = cluster.id;
  t.log(`Docker Engine ${setup!.engine} on h3`);

  await p1.podmanOk('run', '-d', '--name', `c1${id}`, '--network', netconf, p1.image, 'sleep', '3600');
  await p2.podmanOk('run', '-d', '--name', `c2${id}`, '--network', netconf, '--ip', '10.96.1.77', p2.image, 'sleep', '3600');
  await dockerd.dockerOk('run', '-d', '--name', `d3${id}`, '--network', net, dockerd.image, 'sleep', '3600');
  const ip1 = await podmanIp(p1, `c1${id}`, netconf);
  const ip2 = await podmanIp(p2, `c2${id}`, netconf);
  const ip3 = (await dockerd.dockerOk('inspect', '--format', `{{(index .NetworkSettings.Networks "${net}").IPAddress}}`, `d3${id}`)).trim();
  t.regex(ip1, /^10\.96\.1\.\d+$/, 'podman shows the overlay address as the container\'s');
  t.is(ip2, '10.96.1.77', 'podman --ip (CNI_ARGS IP) is honoured');
  t.regex(ip3, /^10\.96\.1\.\d+$/);

  // names are unique across hosts: podman on h2 cannot attach a second c1 (its ADD fails with code 100)
  const clash = await p2.podman('run', '-d', '--name', `c1${id}`, '--network', netconf, p2.image, 'sleep', '3600');
  t.not(clash.code, 0);
  t.regex(clash.stderr, new RegExp(`endpoint with name c1${id} already exists in network ${net}`));
  await p2.podman('rm', '-f', '-t', '0', `c1${id}`);
  // every endpoint is a kvnet endpoint, listed on h3 with its host and name
  const listed = await endpoints();
  t.deepEqual(listed.map((e) => [e.name, e.node]).sort(), [[`c1${id}`, 'h1'], [`c2${id}`, 'h2'], [`d3${id}`, 'h3']].sort());

  await waitFor('c1 (podman, h1) pings c2 (podman, h2)', () => podmanPing(p1, `c1${id}`, ip2), 30_000, 200);
  t.true(await podmanPing(p1, `c1${id}`, ip3), 'c1 (podman, h1) pings d3 (Docker, h3)');
  t.true(await podmanPing(p2, `c2${id}`, ip1), 'c2 (podman, h2) pings c1 (podman, h1)');
  t.true(await podmanPing(p2, `c2${id}`, ip3), 'c2 (podman, h2) pings d3 (Docker, h3)');
  t.is((await dockerd.docker('exec', `d3${id}`, 'ping', '-c', '1', '-W', '1', ip1)).code, 0, 'd3 (Docker, h3) pings c1 (podman, h1)');
  t.is((await dockerd.docker('exec', `d3${id}`, 'ping', '-c', '1', '-W', '1', ip2)).code, 0, 'd3 (Docker, h3) pings c2 (podman, h2)');
  // egress through h1's gateway bridge: the outside namespace has no route back to the container, so a reply means masquerading
  t.true(await podmanPing(p1, `c1${id}`, cluster.sim.outside!.address), 'c1 reaches the outside through the gateway bridge');

  // podman rm -f: its DEL removes the endpoint; every other host drops the peer; the address is free again
  const mac1 = listed.find((e) => e.name === `c1${id}`)!.mac;
  await p1.podmanOk('rm', '-f', '-t', '0', `c1${id}`);
  t.deepEqual((await endpoints()).map((e) => e.name).sort(), [`c2${id}`, `d3${id}`].sort());
  const nid = (await cluster.inspect(h2, net))!.id;
  for (const h of [h2, h3]) {
    await waitFor(`${h.node} to drop c1's peer entries`, async () => {
      const k = await cluster.kernelPeers(h, nid);
      return !k.fdb.some((f) => f.mac === mac1) && !k.neigh.some((n) => n.ip === ip1);
    }, 10_000, 100);
  }
  t.false(await podmanPing(p2, `c2${id}`, ip1), 'c1 is gone');

  // the released address is handed out again, to a container publishing a port through portmap
  const serve = `mkdir -p /www && echo "served by c5 on h1" > /www/index.html && exec httpd -f -p 80 -h /www`;
  await p1.podmanOk('run', '-d', '--name', `c5${id}`, '--network', netconf, '--ip', ip1, '-p', `${PUBLISHED_PORT}:80`, p1.image, 'sh', '-c', serve);
  t.is(await podmanIp(p1, `c5${id}`, netconf), ip1, 'c1\'s address was released and is handed out again');
  await waitFor('d3 (Docker, h3) pings c5 at c1\'s old address', async () => (await dockerd.docker('exec', `d3${id}`, 'ping', '-c', '1', '-W', '1', ip1)).code === 0, 20_000, 200);
  const url = `http://${h1.address}:${PUBLISHED_PORT}/`;
  const body = await waitFor(`${url} from outside the hosts`, async () => {
    const r = await cluster.exec(cluster.sim.outside!.name, 'curl', '-s', '-m', '2', url);
    return r.code === 0 ? r.stdout : undefined;
  }, 20_000, 200);
  t.is(body, 'served by c5 on h1\n', 'podman run -p published the port (portmap after kvnet)');
  await p1.podmanOk('rm', '-f', '-t', '0', `c5${id}`);
  t.not((await cluster.exec(cluster.sim.outside!.name, 'curl', '-s', '-m', '2', url)).code, 0, 'the port is closed once the container is gone');
  await dockerd.dockerOk('rm', '-f', `d3${id}`);
  await p2.podmanOk('rm', '-f', '-t', '0', `c2${id}`);
  t.deepEqual(await endpoints(), []);
});

test.serial('a killed host\'s podman endpoints are reaped by the other hosts, and its peers removed everywhere', async (t) => {
  const skip = skipReason();
  if (skip) return t.fail(skip);
  const { cluster, netconf, net, podman, dockerd } = setup!;
  const [h1, h2, h3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
  const p1 = podman.get('h1')!;
  const p2 = podman.get('h2')!;
  const id = cluster.id;
  // survivors with an endpoint on the network (a host programs peers only for networks it has endpoints on)
  await p1.podmanOk('run', '-d', '--name', `k1${id}`, '--network', netconf, p1.image, 'sleep', '3600');
  await dockerd.dockerOk('run', '-d', '--name', `k3${id}`, '--network', net, dockerd.image, 'sleep', '3600');
  await p2.podmanOk('run', '-d', '--name', `k2${id}`, '--network', netconf, p2.image, 'sleep', '3600');
  const ip = await podmanIp(p2, `k2${id}`, netconf);
  const ep = (await endpoints()).find((e) => e.name === `k2${id}`)!;
  t.is(ep.node, 'h2');
  const nid = (await cluster.inspect(h1, net))!.id;
  for (const h of [h1, h3]) await waitFor(`${h.node} to program k2 as a peer`, async () => (await cluster.kernelPeers(h, nid)).fdb.some((f) => f.mac === ep.mac), 10_000, 100);
  t.true(await podmanPing(p1, `k1${id}`, ip), 'k1 (h1) pings k2 (h2) before h2 dies');

  // h2 dies: its agent, the container (conmon first, so no cleanup runs) and its network namespace
  const netns = await p2.netnsOf(`k2${id}`);
  const pids = (await p2.podmanOk('inspect', '--format', '{{.State.ConmonPid}} {{.State.Pid}}', `k2${id}`)).split(' ').map(Number);
  await cluster.killAgent(h2);
  for (const pid of pids) if (pid > 1) process.kill(pid, 'SIGKILL');
  await run('umount', [netns], { allowFailure: true });
  await run('rm', ['-f', netns], { allowFailure: true });
  t.false(existsSync(netns), `${netns} is gone with its host`);

  await waitFor('h2\'s podman endpoint reaped', async () => !(await endpoints()).some((e) => e.name === `k2${id}`), 60_000, 500);
  for (const h of [h1, h3]) {
    await waitFor(`${h.node} to drop k2's peer entries`, async () => {
      const k = await cluster.kernelPeers(h, nid);
      return !k.fdb.some((f) => f.mac === ep.mac) && !k.neigh.some((n) => n.ip === ip);
    }, 10_000, 100);
  }
  t.deepEqual((await endpoints()).map((e) => e.name).sort(), [`k1${id}`, `k3${id}`].sort(), 'the survivors\' endpoints stay');
  // h2 comes back (its tombstone's netns is gone, so nothing is restored) and podman forgets the container
  await cluster.startAgent(h2);
  const rm = await p2.podman('rm', '-f', '-t', '0', `k2${id}`);
  t.log(`podman rm after the restart: ${rm.code} ${rm.stderr.trim()}`);
  t.deepEqual((await endpoints()).filter((e) => e.node === 'h2'), []);
  await p1.podmanOk('rm', '-f', '-t', '0', `k1${id}`);
  await dockerd.dockerOk('rm', '-f', `k3${id}`);
});
