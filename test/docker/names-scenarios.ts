/**
 * Names across hosts through Docker (issue 14), for one Docker Engine in the plugin's default scope
 * `local`: three simulated hosts, each with a real dockerd started with `--dns 169.254.53.53` (what
 * daemon.json's `"dns"` does; no per-container flag) and a real `kvnet agent --docker-plugin`
 * (`--dns-upstream` = a DNS server in the "outside" namespace), one embedded store. Containers ask
 * Docker's own resolver (127.0.0.11, `docker exec … nslookup`, `ping c1`), which forwards what it does
 * not know to kvnet's resolver over the route the Join answer gave; a long-lived probe in a container's
 * namespace asks kvnet's resolver directly where many queries are needed.
 *
 * | container | host | networks |
 * |---|---|---|
 * | c1 (`--network-alias web`) | h1 | multi |
 * | c2 | h2 | multi |
 * | c3 | h3 | multi, then `docker network connect --alias c3o other` |
 * | b2 | h2 | other |
 * | i1, i3 | h1, h3 | secret (`--internal`) |
 *
 * Each test file under test/docker calls {@link registerDockerNamesScenarios} once with its engine.
 * Needs root, the engine's dockerd (docker-engines.ts), busybox-static; never skipped. Timings are
 * logged, never asserted (`npm run bench -- dns` measures them).
 */

import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { resolverSocketFor } from '../../packages/agent/src/config.ts';
import { readDaemonDns } from '../../packages/agent/src/docker/dns-setup.ts';
import { stopResolver } from '../../packages/agent/src/names/resolver-control.ts';
import { dockerdUnusable, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { dockerEngine, type DockerEngineName } from '../support/docker-engines.ts';
import { agentHasFlags, kvnetCli, startDockerAgent, waitAgentReady } from '../support/docker-agents.ts';
import { UPSTREAM_ANSWER } from '../support/dns-upstream-server.ts';
import { DnsProbe } from '../support/names-fixture.ts';
import { makeTempDir, removeTempDir, REPO_ROOT, runId, startProcess, waitFor, type ManagedProcess } from '../support/process.ts';
import { createSimNetwork, OUTSIDE_ADDRESS, type SimNetwork } from '../support/sim-hosts.ts';

const RESOLVER = '169.254.53.53';
const HOSTS = 3;
const CONVERGE_MS = 120_000;
const PROBE = join(REPO_ROOT, 'test/support/dns-probe.ts');
const UPSTREAM_SERVER = join(REPO_ROOT, 'test/support/dns-upstream-server.ts');
const SQLITE_LOCKER = join(REPO_ROOT, 'test/cluster/sqlite-lock.ts');

const id = runId();
let sim: SimNetwork | undefined;
let dir = '';
let upstream: ManagedProcess | undefined;
const dockerds: Dockerd[] = [];
const agents: ManagedProcess[] = [];
const sockets: string[] = [];
const probes: DnsProbe[] = [];
/** Container → its address on each network (from dockerd). */
const ips: Record<string, Record<string, string>> = {};

const d = (host: number): Dockerd => dockerds[host - 1]!;

function startAgent(i: number): ManagedProcess {
  return startDockerAgent({ id, dir, index: i, host: sim!.hosts[i]!, dockerd: dockerds[i]!, apiSocket: sockets[i]!, store: `local://${dir}/store.db`, extraArgs: ['--dns-upstream', OUTSIDE_ADDRESS] });
}

async function restartAgent(i: number): Promise<void> {
  const length = readFileSync(agents[i]!.logFile, 'utf8').length;
  agents[i] = startAgent(i);
  await waitAgentReady(agents[i]!, length);
}

/** `nslookup NAME` inside a container, through Docker's own resolver: the addresses (or PTR names) it printed. */
async function lookup(host: number, container: string, name: string): Promise<{ addresses: string[]; names: string[]; output: string }> {
  const r = await d(host).docker('exec', container, 'busybox', 'nslookup', name);
  const output = r.stdout + r.stderr;
  const body = output.split(/\n\s*\n/).slice(1).join('\n');
  return { addresses: [...body.matchAll(/^Address:\s+(\S+)$/gm)].map((m) => m[1]!).sort(), names: [...body.matchAll(/name = (\S+)/g)].map((m) => m[1]!), output };
}

/** A DNS probe inside a container's network namespace (entered by the container's pid), asking kvnet's resolver directly. */
async function probeIn(host: number, container: string): Promise<DnsProbe> {
  const pid = await d(host).dockerOk('inspect', '-f', '{{.State.Pid}}', container);
  const child = spawn('nsenter', ['-t', pid, '-n', process.execPath, '--import', 'tsx', PROBE], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const probe = new DnsProbe(child);
  probes.push(probe);
  await probe.request({ op: 'raw', transport: 'udp', hex: '', server: '127.0.0.1', port: 9, timeoutMs: 1 });
  return probe;
}

const answers = (a: { answers?: Array<{ data: string }> }): string[] => (a.answers ?? []).map((x) => x.data).sort();

async function ipsOf(host: number, container: string): Promise<Record<string, string>> {
  const out = await d(host).dockerOk('inspect', '-f', '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}', container);
  return Object.fromEntries(out.split(/\s+/).filter(Boolean).map((kv) => kv.split('=') as [string, string]));
}

async function run(host: number, name: string, network: string, ...extra: string[]): Promise<void> {
  await d(host).dockerOk('run', '-d', '--name', name, '--network', network, ...extra, d(host).image, 'sleep', '3600');
  ips[name] = await ipsOf(host, name);
}

async function createNetwork(host: number, name: string, ...options: string[]): Promise<void> {
  await d(host).dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', ...options, name);
  for (const other of dockerds) {
    await waitFor(`${name} listed by ${other.host.name}'s dockerd`, async () => (await other.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${name} kvnet`), CONVERGE_MS, 250);
  }
}

function diagnostics(t: ExecutionContext): void {
  for (const a of agents) t.log(`--- ${a.name} ---\n${a.log().split('\n').slice(-25).join('\n')}`);
}

export function registerDockerNamesScenarios(options: { label: string; engine?: DockerEngineName }): void {
  const engine = dockerEngine(options.engine).name;
  const rt = (title: string, fn: (t: ExecutionContext) => Promise<void>): void =>
    test.serial(`[Docker ${engine}] ${title}`, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        diagnostics(t);
        throw err;
      }
    });

  test.before(async (t) => {
    t.timeout(10 * 60_000);
    const hasPlugin = await agentHasFlags('--docker-plugin', '--dns-upstream');
    const unusable = await dockerdUnusable(engine);
    if (!hasPlugin || unusable) throw new Error(`cannot run the Docker names tests on ${engine}: ${unusable || 'the agent lacks --docker-plugin or --dns-upstream'}`);
    dir = makeTempDir(`${options.label}-${id}`);
    sim = await createSimNetwork({ hosts: HOSTS, prefix: id, outside: true });
    upstream = startProcess('dns-upstream', process.execPath, ['--import', 'tsx', UPSTREAM_SERVER, OUTSIDE_ADDRESS, '53'], { netns: sim.outside!.name, cwd: REPO_ROOT });
    for (const [i, h] of sim.hosts.entries()) {
      // The host setting kvnet documents: dockerd's `dns` (daemon.json) is the resolver address.
      dockerds.push(await startDockerd({ host: h, runId: id, engine, extraArgs: ['--dns', RESOLVER] }));
      sockets.push(join(dir, `h${i + 1}.sock`));
      agents.push(startAgent(i));
    }
    for (const a of agents) await waitAgentReady(a);
    await waitFor('the upstream DNS server', () => upstream!.log().includes('listening'), 30_000, 100);
    await createNetwork(1, 'multi', '--subnet', '10.81.1.0/24');
    await createNetwork(2, 'other', '--subnet', '10.81.2.0/24');
    await createNetwork(3, 'secret', '--internal', '--subnet', '10.81.3.0/24');
    await run(1, 'c1', 'multi', '--network-alias', 'web');
    await run(2, 'c2', 'multi');
    await run(3, 'c3', 'multi');
    await d(3).dockerOk('network', 'connect', '--alias', 'c3o', 'other', 'c3');
    ips.c3 = await ipsOf(3, 'c3');
    await run(2, 'b2', 'other');
    await run(1, 'i1', 'secret');
    await run(3, 'i3', 'secret');
  });

  test.after.always(async () => {
    for (const p of probes) p.child.kill('SIGKILL');
    for (const [i, a] of agents.entries()) if (a.child.exitCode !== null || a.child.signalCode !== null) await restartAgent(i).catch(() => undefined);
    for (const x of dockerds) {
      const ids = (await x.docker('ps', '-aq')).stdout.split('\n').filter(Boolean);
      if (ids.length) await x.docker('rm', '-f', ...ids);
    }
    for (const n of ['multi', 'other', 'secret']) await dockerds[0]?.docker('network', 'rm', n);
    for (const x of dockerds) await x.stop().catch((err) => console.error('dockerd teardown:', err));
    for (const a of agents) await a.stop(10_000).catch(() => undefined);
    // an agent's stop leaves its resolver answering, by design: the run takes them along
    for (const s of sockets) await stopResolver(resolverSocketFor(s)).catch(() => undefined);
    await upstream?.kill();
    await sim?.destroy().catch(() => undefined);
    if (dir) removeTempDir(dir);
  });

  rt('the seeds\' demo by name: ping c1 from another host; aliases, <name>.<network>, PTR; one resolver route per container', async (t) => {
    const ping = await d(2).docker('exec', 'c2', 'ping', '-c', '1', '-W', '5', 'c1');
    t.is(ping.code, 0, `docker exec c2 ping c1 (c1 on another host): ${ping.stdout}${ping.stderr}`);
    t.regex(ping.stdout, new RegExp(`PING c1 \\(${ips.c1!.multi!.replace(/\./g, '\\.')}\\)`));
    t.deepEqual((await lookup(3, 'c3', 'c1')).addresses, [ips.c1!.multi!], 'from a third host');
    // Aliases are learned from the running container (a sync after Join): wait for them in the records.
    for (const [net, name, alias] of [['multi', 'c1', 'web'], ['other', 'c3', 'c3o']]) {
      await waitFor(`alias ${alias} of ${name} in kvnet`, async () => {
        const rec = JSON.parse((await kvnetCli(sockets[0]!, 'network', 'inspect', net!)).stdout)[0] as { endpoints: Array<{ name: string; aliases?: string[] }> };
        return rec.endpoints.find((e) => e.name === name)?.aliases?.includes(alias!);
      }, CONVERGE_MS, 200);
    }
    const web = await lookup(2, 'c2', 'web');
    t.deepEqual(web.addresses, [ips.c1!.multi!], `--network-alias, from another host: ${web.output}`);
    t.deepEqual((await lookup(2, 'b2', 'c3o')).addresses, [ips.c3!.other!], 'docker network connect --alias, from another host');
    t.deepEqual((await lookup(1, 'c1', 'c3.multi')).addresses, [ips.c3!.multi!], '<name>.<network>');
    const ptr = await lookup(2, 'c2', ips.c1!.multi!);
    t.true(ptr.names.some((n) => /^c1\.multi\.?$/.test(n)), `PTR of c1's address from another host: ${ptr.output}`);
    // c3 is on two kvnet networks: its first Join carried the route, the second none (dockerd would have failed it)
    const routes = (await d(3).dockerOk('exec', 'c3', 'ip', '-4', 'route', 'show', `${RESOLVER}/32`)).split('\n').filter(Boolean);
    t.is(routes.length, 1, routes.join('; '));
    t.regex(routes[0]!, /dev eth0 /);
  });

  rt('isolation: a container resolves only the networks it is on; on two, both', async (t) => {
    t.deepEqual((await lookup(2, 'c2', 'b2')).addresses, [], 'c2 (multi) does not get b2 (other), though both are on h2\'s kvnet');
    t.deepEqual((await lookup(2, 'b2', 'c1')).addresses, [], 'b2 (other) does not get c1 (multi)');
    t.deepEqual((await lookup(3, 'c3', 'b2')).addresses, [ips.b2!.other!], 'c3 (multi + other) gets b2');
    t.deepEqual((await lookup(3, 'c3', 'c2')).addresses, [ips.c2!.multi!], 'and c2');
  });

  rt('internal network: names resolve across hosts; other names get no address and never reach the upstream', async (t) => {
    t.deepEqual((await lookup(1, 'i1', 'i3')).addresses, [ips.i3!.secret!]);
    const before = upstream!.log().length;
    const leak = await lookup(1, 'i1', 'leak.up.test');
    t.deepEqual(leak.addresses, [], leak.output);
    await new Promise((r) => setTimeout(r, 500));
    t.false(upstream!.log().slice(before).includes('leak.up.test'), 'nothing reached the upstream');
  });

  rt('other names are forwarded to --dns-upstream; a container\'s own --dns keeps working for them', async (t) => {
    t.deepEqual((await lookup(2, 'c2', 'fwd.up.test')).addresses, [UPSTREAM_ANSWER]);
    const own = await d(2).docker('run', '--rm', '--network', 'multi', '--dns', OUTSIDE_ADDRESS, d(2).image, 'busybox', 'nslookup', 'own.up.test');
    t.regex(own.stdout, new RegExp(`Address:\\s+${UPSTREAM_ANSWER.replace(/\./g, '\\.')}`), `--dns ${OUTSIDE_ADDRESS}: ${own.stdout}${own.stderr}`);
  });

  rt('freshness: a new container resolves on the other hosts; docker rm -f makes it stop resolving everywhere', async (t) => {
    const [p2, p3] = await Promise.all([probeIn(2, 'c2'), probeIn(3, 'c3')]);
    const t0 = Date.now();
    await d(1).dockerOk('run', '-d', '--name', 'c5', '--network', 'multi', d(1).image, 'sleep', '3600');
    const ran = Date.now();
    const ip = (await ipsOf(1, 'c5')).multi!;
    for (const [host, p] of [[2, p2], [3, p3]] as const) {
      const at = await waitFor(`c5 resolving on h${host}`, async () => (answers(await p.query('c5')).includes(ip) ? Date.now() : undefined), CONVERGE_MS, 10);
      t.log(`c5 resolved on h${host} ${at - ran} ms after docker run -d returned (run took ${ran - t0} ms)`);
    }
    t.deepEqual((await lookup(2, 'c2', 'c5')).addresses, [ip], 'through Docker\'s resolver too');
    const t1 = Date.now();
    await d(1).dockerOk('rm', '-f', 'c5');
    const removed = Date.now();
    for (const [host, p] of [[2, p2], [3, p3]] as const) {
      const at = await waitFor(`c5 gone on h${host}`, async () => (answers(await p.query('c5')).length === 0 ? Date.now() : undefined), CONVERGE_MS, 10);
      t.log(`c5 stopped resolving on h${host} ${at - removed} ms after docker rm -f returned (rm took ${removed - t1} ms)`);
    }
    t.deepEqual((await lookup(2, 'c2', 'c5')).addresses, []);
  });

  rt('docker network disconnect of the route holder: the route moves to the container\'s next kvnet interface', async (t) => {
    await d(3).dockerOk('network', 'disconnect', 'multi', 'c3');
    const routes = (await d(3).dockerOk('exec', 'c3', 'ip', '-4', 'route', 'show', `${RESOLVER}/32`)).split('\n').filter(Boolean);
    t.is(routes.length, 1, `one route after the disconnect: ${routes.join('; ')}`);
    const dev = /dev (\S+)/.exec(routes[0]!)?.[1];
    const addr = await d(3).dockerOk('exec', 'c3', 'ip', '-4', '-o', 'addr', 'show', 'dev', dev!);
    t.true(addr.includes(`${ips.c3!.other!}/`), `the route goes through the interface on other (${dev}): ${addr}`);
    t.deepEqual((await lookup(3, 'c3', 'b2')).addresses, [ips.b2!.other!], 'c3 still resolves names of other across hosts');
    t.deepEqual((await lookup(3, 'c3', 'c1')).addresses, [], 'and no longer those of multi');
    await d(3).dockerOk('network', 'connect', 'multi', 'c3');
    ips.c3 = await ipsOf(3, 'c3');
    // `docker network connect` of a running container: its endpoint may take the container's name only
    // once dockerd lists it (a sync after the Join), so this is polled.
    await waitFor('c3 back on multi, resolving from h1', async () => (await lookup(1, 'c1', 'c3')).addresses.join() === ips.c3!.multi!, CONVERGE_MS, 200);
    t.pass();
  });

  rt('a store outage and an agent restart do not stop resolution of known names', async (t) => {
    const locker = startProcess('sqlite-locker', process.execPath, ['--import', 'tsx', SQLITE_LOCKER, join(dir, 'store.db')], { cwd: REPO_ROOT, logFile: join(dir, 'locker.log') });
    try {
      await waitFor('the store locked', () => locker.log().includes('locked'), 30_000, 50);
      t.deepEqual((await lookup(2, 'c2', 'c3')).addresses, [ips.c3!.multi!], 'during the store outage');
      t.deepEqual((await lookup(3, 'c3', 'c1')).addresses, [ips.c1!.multi!]);
    } finally {
      await locker.kill();
    }
    const before = JSON.parse((await kvnetCli(sockets[1]!, 'dns', 'status')).stdout) as { pid: number };
    await agents[1]!.stop(10_000);
    t.deepEqual((await lookup(2, 'c2', 'c1')).addresses, [ips.c1!.multi!], 'with h2\'s agent stopped');
    await restartAgent(1);
    const after = JSON.parse((await kvnetCli(sockets[1]!, 'dns', 'status')).stdout) as { pid: number };
    t.is(after.pid, before.pid, 'the restarted agent feeds the same resolver process');
    t.deepEqual((await lookup(2, 'c2', 'c3')).addresses, [ips.c3!.multi!]);
  });

  rt('malformed and oversized packets get no crash; the agent log and kvnet doctor confirm the resolver and dockerd\'s dns setting', async (t) => {
    const probe = await probeIn(2, 'c2');
    const header = (flags: string, qd = '0001'): string => `0001${flags}${qd}000000000000`;
    const bad = ['', 'ff', header('0100', '0000'), `${header('0100')}3f6331`, `${header('0100')}c00c00010001`, `${header('2800')}0263310000010001`, 'ab'.repeat(60_000)];
    for (const hex of bad) await probe.request({ op: 'raw', transport: 'udp', hex, timeoutMs: 300 });
    for (const hex of bad.slice(0, 6)) await probe.request({ op: 'raw', transport: 'tcp', hex: (hex.length / 2).toString(16).padStart(4, '0') + hex, timeoutMs: 300 });
    t.deepEqual(answers(await probe.query('c1')), [ips.c1!.multi!], 'UDP after the junk');
    t.deepEqual(answers(await probe.query('c1', 1, 'tcp')), [ips.c1!.multi!], 'TCP after the junk');
    t.deepEqual(readDaemonDns(d(1).socket).dns, [RESOLVER], 'the check reads the real dockerd\'s --dns');
    t.regex(agents[0]!.log(), /dockerd sends its containers' DNS queries to kvnet's resolver 169\.254\.53\.53/);
    const doctor = JSON.parse((await kvnetCli(sockets[0]!, 'doctor', '--json')).stdout) as { findings: Array<{ area: string; status: string; summary: string }> };
    const dns = doctor.findings.filter((f) => f.area === 'dns');
    t.true(dns.some((f) => f.status === 'ok' && /^kvnet resolver \(pid \d+\) answers at 169\.254\.53\.53 with (\d+) of \1 listeners/.test(f.summary)), `kvnet doctor: ${JSON.stringify(dns)}`);
    t.true(dns.some((f) => f.status === 'ok' && /^dockerd sends its containers' DNS queries to 169\.254\.53\.53$/.test(f.summary)));
  });

  rt('a dead host\'s names stop resolving everywhere once it is reaped', async (t) => {
    const probe = await probeIn(1, 'c1');
    t.deepEqual(answers(await probe.query('c3')), [ips.c3!.multi!]);
    const t0 = Date.now();
    await agents[2]!.kill();
    const gone = await waitFor('c3 gone on h1', async () => (answers(await probe.query('c3')).length === 0 ? Date.now() : undefined), CONVERGE_MS, 20);
    t.log(`c3 stopped resolving on h1 ${gone - t0} ms after h3's agent was killed (TTL 4 s + reaping grace)`);
    t.deepEqual((await lookup(2, 'c2', 'c3')).addresses, [], 'and on h2');
  });
}
