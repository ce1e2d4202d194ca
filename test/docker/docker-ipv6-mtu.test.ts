/**
 * Issue 15 in Docker: real dockerds and real `kvnet agent --docker-plugin` processes on simulated
 * hosts whose underlay links have MTU 1400, one embedded store per engine.
 *
 * - Docker 28.5.2, three hosts: the default MTU (1350) on containers of every host; `docker network
 *   create -o com.docker.network.driver.mtu=1300` honoured on every host and shown by `docker network
 *   inspect` of the mirrored network; `kvnet network create --mtu` shown by `docker network inspect`; an
 *   MTU the underlay cannot carry refused with its reason; dual stack (`--ipv6 --subnet … --subnet …`,
 *   `--ip6`) with `ping -6` across the three hosts, the exact NDP, ARP and FDB entries, both addresses
 *   released on `docker rm -f`; an IPv6-only network (`--ipv6 --ipv4=false`).
 * - Docker 20.10 (Debian's), two hosts: the MTU option and the kvnet flag honoured, and dual stack.
 *
 * Needs root, the engines (scripts/install-docker.sh, Debian's docker.io), busybox-static; the tests
 * fail with the reason otherwise.
 */

import test, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { overlayNetnsName } from '@kvnet/dataplane';
import { Ipam } from '@kvnet/ipam';
import { openStore, type KVStore } from '@kvnet/store';
import { dockerdUnusable, startDockerd, type Dockerd } from '../support/dockerd.ts';
import type { DockerEngineName } from '../support/docker-engines.ts';
import { kvnetCli, startDockerAgent, waitAgentReady } from '../support/docker-agents.ts';
import { makeTempDir, removeTempDir, run, runId, waitFor, type ManagedProcess } from '../support/process.ts';
import { createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';

const UNDERLAY_MTU = 1400;
const DEFAULT_MTU = UNDERLAY_MTU - 50;
const CONVERGE_MS = 120_000;

interface KvnetEndpoint {
  id: string;
  name: string;
  node: string;
  ip: string;
  ip6?: string;
  mac: string;
}
interface KvnetNetwork {
  id: string;
  name: string;
  mtu?: number;
  subnet: string;
  subnet6?: string;
  endpoints: KvnetEndpoint[];
}

/** Simulated hosts with a dockerd and an agent each, on one store, for one engine. */
class Group {
  readonly id = runId();
  sim: SimNetwork | undefined;
  dir = '';
  readonly dockerds: Dockerd[] = [];
  readonly agents: ManagedProcess[] = [];
  readonly sockets: string[] = [];
  store: KVStore | undefined;

  constructor(
    readonly engine: DockerEngineName,
    readonly hosts: number,
  ) {}

  get storeUrl(): string {
    return `local://${this.dir}/store.db`;
  }

  async start(): Promise<void> {
    const why = await dockerdUnusable(this.engine);
    if (why) throw new Error(`cannot run the Docker ${this.engine} tests: ${why}`);
    this.dir = makeTempDir(`docker-v6-${this.id}`);
    this.sim = await createSimNetwork({ hosts: this.hosts, prefix: this.id, underlayMtu: UNDERLAY_MTU });
    for (const [i, h] of this.sim.hosts.entries()) {
      this.dockerds.push(await startDockerd({ host: h, runId: this.id, engine: this.engine }));
      this.sockets.push(join(this.dir, `h${i + 1}.sock`));
      this.agents.push(startDockerAgent({ id: this.id, dir: this.dir, index: i, host: h, dockerd: this.dockerds[i]!, apiSocket: this.sockets[i]!, store: this.storeUrl }));
    }
    for (const a of this.agents) await waitAgentReady(a);
    this.store = await openStore(this.storeUrl);
  }

  async stop(): Promise<void> {
    for (const d of this.dockerds) await d.stop().catch((err) => console.error('dockerd teardown:', err));
    for (const a of this.agents) await a.stop(10_000).catch(() => undefined);
    await this.store?.close().catch(() => undefined);
    // the agents leave the data plane in place by design: their overlay namespaces go with the run's
    await this.sim?.destroy().catch(() => undefined);
    if (this.dir) removeTempDir(this.dir);
  }

  kvnet(host: number, ...args: string[]) {
    return kvnetCli(this.sockets[host]!, ...args);
  }

  async inspect(host: number, name: string): Promise<KvnetNetwork | undefined> {
    const r = await this.kvnet(host, 'network', 'inspect', name);
    return r.code === 0 ? (JSON.parse(r.stdout) as KvnetNetwork[])[0] : undefined;
  }

  async listedEverywhere(name: string): Promise<void> {
    for (const d of this.dockerds) {
      await waitFor(`${name} in ${d.host.name}'s dockerd`, async () => (await d.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(name), CONVERGE_MS, 200);
    }
  }

  /** A container on host `i` on `network`, sleeping. */
  async run(i: number, name: string, network: string, ...extra: string[]): Promise<string> {
    const d = this.dockerds[i]!;
    await d.dockerOk('run', '-d', '--name', name, '--network', network, ...extra, d.image, 'sleep', '3600');
    return name;
  }

  /** Lines of `ip` output in a container, e.g. `ip -o -6 addr show eth0`. */
  async inContainer(i: number, container: string, ...cmd: string[]): Promise<string> {
    return this.dockerds[i]!.dockerOk('exec', container, ...cmd);
  }

  async mtuOf(i: number, container: string): Promise<number> {
    const m = /mtu (\d+)/.exec(await this.inContainer(i, container, 'ip', 'link', 'show', 'eth0'));
    return Number(m?.[1]);
  }

  /** The container's global IPv6 address on eth0 (Docker's view), or undefined. */
  async ip6Of(i: number, container: string, network: string): Promise<string | undefined> {
    const out = await this.dockerds[i]!.dockerOk('inspect', '--format', `{{(index .NetworkSettings.Networks "${network}").GlobalIPv6Address}}`, container);
    return out.trim() || undefined;
  }

  async ipOf(i: number, container: string, network: string): Promise<string | undefined> {
    const out = await this.dockerds[i]!.dockerOk('inspect', '--format', `{{(index .NetworkSettings.Networks "${network}").IPAddress}}`, container);
    return out.trim() || undefined;
  }

  /** vxlan0's neighbour and FDB entries in the network's overlay namespace on host `i`. */
  async peers(i: number, nid: string): Promise<{ neigh: string[]; fdb: string[] }> {
    const ns = overlayNetnsName(`${this.id}${i + 1}`, nid);
    const n = await run('ip', ['-n', ns, '-j', 'neigh', 'show', 'dev', 'vxlan0'], { allowFailure: true });
    const f = await run('bridge', ['-n', ns, '-j', 'fdb', 'show', 'dev', 'vxlan0'], { allowFailure: true });
    const neigh = (JSON.parse(n.stdout || '[]') as Array<{ dst: string; lladdr?: string }>).filter((e) => e.lladdr).map((e) => `${e.dst} ${e.lladdr}`);
    const fdb = (JSON.parse(f.stdout || '[]') as Array<{ mac: string; dst?: string }>).filter((e) => e.dst).map((e) => `${e.mac} ${e.dst}`);
    return { neigh: neigh.sort(), fdb: fdb.sort() };
  }

  /** Allocated IPs of a pool (the store's IPAM books). */
  async allocated(poolId: string): Promise<string[]> {
    return (await new Ipam({ store: this.store! }).listAllocations(poolId)).map((a) => a.ip);
  }

  async record(nid: string): Promise<{ poolId: string; poolId6?: string; mtu?: number }> {
    const e = await this.store!.get(`networks/${nid}`);
    if (!e) throw new Error(`no record networks/${nid}`);
    return JSON.parse(Buffer.from(e.value).toString()) as { poolId: string; poolId6?: string; mtu?: number };
  }
}

const g28 = new Group('28.5.2', 3);
const g20 = new Group('20.10', 2);

test.after.always(async () => {
  await g28.stop();
  await g20.stop();
});

/** Waits until a ping from container `c` on host `i` reaches `ip` (busybox ping; `-6` for IPv6). */
async function waitPing(g: Group, i: number, c: string, ip: string, v6 = false): Promise<boolean> {
  return waitFor(`${c} pings ${ip}`, async () => (await g.dockerds[i]!.docker('exec', c, 'ping', ...(v6 ? ['-6'] : []), '-c', '1', '-W', '2', ip)).code === 0, CONVERGE_MS, 300);
}

async function mtuScenario(t: ExecutionContext, g: Group): Promise<void> {
  const id = g.id;
  const last = g.hosts - 1;
  // the default: the creating host's underlay MTU − 50, on every host
  const d1 = `dm1${id}`;
  await g.dockerds[0]!.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.180.0.0/24', d1);
  await g.listedEverywhere(d1);
  t.is((await g.inspect(last, d1))?.mtu, DEFAULT_MTU);
  await g.run(0, `a${id}`, d1);
  await g.run(last, `b${id}`, d1);
  t.is(await g.mtuOf(0, `a${id}`), DEFAULT_MTU, 'the handoff veth carries the network MTU (dockerd does not set it)');
  t.is(await g.mtuOf(last, `b${id}`), DEFAULT_MTU);
  const ipA = (await g.ipOf(0, `a${id}`, d1))!;
  t.true(await waitPing(g, last, `b${id}`, ipA));
  t.is((await g.dockerds[last]!.docker('exec', `b${id}`, 'ping', '-c', '1', '-W', '2', '-s', String(DEFAULT_MTU - 28), ipA)).code, 0, 'full-size packets cross hosts');

  // -o com.docker.network.driver.mtu=1300 on one host: the record, every host's containers, the mirrored Docker network
  const d2 = `dm2${id}`;
  await g.dockerds[last]!.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.180.1.0/24', '-o', 'com.docker.network.driver.mtu=1300', d2);
  await g.listedEverywhere(d2);
  t.is((await g.inspect(0, d2))?.mtu, 1300);
  const mirrored = JSON.parse(await g.dockerds[0]!.dockerOk('network', 'inspect', d2))[0] as { Options: Record<string, string> };
  t.is(mirrored.Options['com.docker.network.driver.mtu'], '1300', "the mirrored network carries the option: docker network inspect shows it on every host");
  await g.run(0, `c${id}`, d2);
  t.is(await g.mtuOf(0, `c${id}`), 1300);

  // kvnet network create --mtu: docker network inspect shows it, containers get it
  const k3 = `km3${id}`;
  t.is((await g.kvnet(0, 'network', 'create', '--subnet', '10.180.2.0/24', '--mtu', '1280', k3)).code, 0);
  await g.listedEverywhere(k3);
  const km = JSON.parse(await g.dockerds[last]!.dockerOk('network', 'inspect', k3))[0] as { Options: Record<string, string> };
  t.is(km.Options['com.docker.network.driver.mtu'], '1280');
  await g.run(last, `d${id}`, k3);
  t.is(await g.mtuOf(last, `d${id}`), 1280);

  // an MTU the underlay cannot carry: refused with the reason, nothing kept
  const bad = await g.dockerds[0]!.docker('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.180.3.0/24', '-o', 'com.docker.network.driver.mtu=1400', `dm4${id}`);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /invalid option com\.docker\.network\.driver\.mtu "1400": is above 1350, what underlay eth0 carries \(MTU 1400 − 50 bytes of VXLAN over IPv4\)/);
  t.false((await g.kvnet(0, 'network', 'ls')).stdout.includes(`dm4${id}`));
  await waitFor('the refused network\'s pool released by Docker\'s rollback', async () => !(await g.store!.list('ipam/pool-table/pools')).entries.some((e) => Buffer.from(e.value).toString().includes('10.180.3.0/24')), CONVERGE_MS, 200);

  for (const [i, c] of [[0, `a${id}`], [last, `b${id}`], [0, `c${id}`], [last, `d${id}`]] as const) await g.dockerds[i]!.docker('rm', '-f', c);
  await g.dockerds[0]!.dockerOk('network', 'rm', d1);
  await g.dockerds[last]!.dockerOk('network', 'rm', d2);
  t.is((await g.kvnet(0, 'network', 'rm', k3)).code, 0);
}

async function dualStackScenario(t: ExecutionContext, g: Group): Promise<void> {
  const id = g.id;
  const net = `ds${id}`;
  await g.dockerds[0]!.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--ipv6', '--subnet', '10.181.0.0/24', '--subnet', 'fd00:181::/64', net);
  await g.listedEverywhere(net);
  const k = (await g.inspect(g.hosts - 1, net))!;
  t.like(k, { subnet: '10.181.0.0/24', subnet6: 'fd00:181::/64' });
  const mirrored = JSON.parse(await g.dockerds[g.hosts - 1]!.dockerOk('network', 'inspect', net))[0] as { EnableIPv6: boolean; IPAM: { Config: Array<{ Subnet: string }> } };
  t.true(mirrored.EnableIPv6, 'mirrored with IPv6 on');
  t.deepEqual(mirrored.IPAM.Config.map((c) => c.Subnet).sort(), ['10.181.0.0/24', 'fd00:181::/64']);

  const names: string[] = [];
  for (let i = 0; i < g.hosts; i++) names.push(await g.run(i, `v${i + 1}${id}`, net, ...(i === 0 ? ['--ip6', 'fd00:181::99'] : [])));
  const ip6 = await Promise.all(names.map((c, i) => g.ip6Of(i, c, net)));
  const ip4 = await Promise.all(names.map((c, i) => g.ipOf(i, c, net)));
  t.is(ip6[0], 'fd00:181::99', '--ip6 honoured');
  t.is(new Set(ip6).size, g.hosts, 'distinct IPv6 addresses');
  for (const [i, c] of names.entries()) t.regex(await g.inContainer(i, c, 'ip', '-o', '-6', 'addr', 'show', 'eth0'), new RegExp(`inet6 ${ip6[i]}/64`));
  for (let i = 1; i < g.hosts; i++) t.true(await waitPing(g, i, names[i]!, ip6[0]!, true), `ping -6 from ${names[i]} on h${i + 1} to h1`);
  t.true(await waitPing(g, 0, names[0]!, ip6[g.hosts - 1]!, true), 'and back');
  t.true(await waitPing(g, 0, names[0]!, ip4[g.hosts - 1]!), 'IPv4 too');

  // exact entries on every host: ARP + NDP per remote container, FDB at its host's VTEP
  await waitFor('every endpoint in kvnet network inspect', async () => (await g.inspect(0, net))?.endpoints.length === g.hosts, CONVERGE_MS, 300);
  const eps = (await g.inspect(0, net))!.endpoints;
  for (let i = 0; i < g.hosts; i++) {
    const remote = eps.filter((e) => e.node !== `h${i + 1}`);
    const p = await g.peers(i, k.id);
    t.deepEqual(p.neigh, remote.flatMap((e) => [`${e.ip} ${e.mac}`, `${e.ip6} ${e.mac}`]).sort(), `ARP and NDP on h${i + 1}`);
    t.deepEqual(p.fdb, remote.map((e) => `${e.mac} ${g.sim!.hosts[Number(e.node.slice(1)) - 1]!.address}`).sort(), `FDB on h${i + 1}`);
  }

  // docker rm -f releases both addresses and the peers everywhere
  const rec = await g.record(k.id);
  t.truthy(rec.poolId6);
  await g.dockerds[g.hosts - 1]!.dockerOk('rm', '-f', names[g.hosts - 1]!);
  const goneV4 = ip4[g.hosts - 1]!;
  const goneV6 = ip6[g.hosts - 1]!;
  await waitFor('both addresses released', async () => !(await g.allocated(rec.poolId)).includes(goneV4) && !(await g.allocated(rec.poolId6!)).includes(goneV6), CONVERGE_MS, 300);
  await waitFor("h1 drops the removed container's entries", async () => !(await g.peers(0, k.id)).neigh.some((n) => n.startsWith(`${goneV6} `) || n.startsWith(`${goneV4} `)), CONVERGE_MS, 300);
  t.pass();
  for (let i = 0; i < g.hosts - 1; i++) await g.dockerds[i]!.docker('rm', '-f', names[i]!);
  await g.dockerds[0]!.dockerOk('network', 'rm', net);
  await waitFor('the network and both pools gone', async () => (await g.store!.list('ipam/pool-table/pools')).entries.every((e) => !Buffer.from(e.value).toString().includes('10.181.0.0/24') && !Buffer.from(e.value).toString().includes('fd00:181::/64')), CONVERGE_MS, 300);
}

test.serial('Docker 28.5.2: default MTU from the underlay, -o com.docker.network.driver.mtu and kvnet --mtu honoured and shown on every host, too large refused', async (t) => {
  t.timeout(10 * 60_000);
  await g28.start();
  await mtuScenario(t, g28);
});

test.serial('Docker 28.5.2: dual stack on three hosts (--ipv6, two --subnet, --ip6): ping -6 across hosts, exact ARP/NDP/FDB entries, both addresses released on rm -f', async (t) => {
  t.timeout(10 * 60_000);
  await dualStackScenario(t, g28);
});

test.serial('Docker 28.5.2: IPv6-only network (--ipv6 --ipv4=false) across two hosts', async (t) => {
  t.timeout(10 * 60_000);
  const g = g28;
  const id = g.id;
  const net = `s6${id}`;
  await g.dockerds[1]!.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--ipv6', '--ipv4=false', '--subnet', 'fd00:182::/64', net);
  await g.listedEverywhere(net);
  const k = (await g.inspect(0, net))!;
  t.like(k, { subnet: 'fd00:182::/64', subnet6: 'fd00:182::/64' });
  const mirrored = JSON.parse(await g.dockerds[0]!.dockerOk('network', 'inspect', net))[0] as { EnableIPv4?: boolean; EnableIPv6: boolean };
  t.true(mirrored.EnableIPv6);
  t.false(mirrored.EnableIPv4, 'mirrored IPv6-only');
  const a = await g.run(0, `x1${id}`, net);
  const b = await g.run(1, `x2${id}`, net);
  const ipA = (await g.ip6Of(0, a, net))!;
  t.regex(ipA, /^fd00:182::/);
  t.is(await g.ipOf(1, b, net), undefined, 'no IPv4 address');
  t.notRegex(await g.inContainer(1, b, 'ip', '-o', '-4', 'addr', 'show', 'eth0'), /inet /);
  t.regex(await g.inContainer(0, a, 'ip', 'link', 'show', 'eth0'), /link\/ether 06:/, 'the IPv6-only MAC rule');
  t.true(await waitPing(g, 1, b, ipA, true), 'ping -6 across hosts');
  await g.dockerds[0]!.docker('rm', '-f', a);
  await g.dockerds[1]!.docker('rm', '-f', b);
  await g.dockerds[1]!.dockerOk('network', 'rm', net);
});

test.serial('Docker 20.10: default MTU, -o com.docker.network.driver.mtu and kvnet --mtu honoured and shown; dual stack across two hosts', async (t) => {
  t.timeout(15 * 60_000);
  await g20.start();
  await mtuScenario(t, g20);
  await dualStackScenario(t, g20);
});
