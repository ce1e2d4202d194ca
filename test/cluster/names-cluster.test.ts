/**
 * Names across hosts without Docker (issue 14): four simulated hosts with real `kvnet agent`s on etcd,
 * "containers" attached with `kvnet network connect --netns … --name … [--alias …]`, each agent's real
 * resolver process, and a DNS server in the "outside" namespace as the upstream (`--dns-upstream`).
 * Queries are made from the containers' own namespaces to 169.254.53.53 (busybox nslookup; a long-lived
 * probe where many queries are needed; glibc through `ip netns exec` and /etc/netns/<ns>/resolv.conf,
 * the way a netns user sets the resolver).
 *
 * | container | host | networks |
 * |---|---|---|
 * | c1 (alias web) | h1 | multi |
 * | c2 | h2 | multi |
 * | c3 | h3 | multi (eth0), other (eth1) |
 * | b2 | h2 | other |
 * | i1, i2 | h1, h2 | secret (internal) |
 * | c4 | h4 | multi (h4 dies: reaped) |
 *
 * Needs root, etcd and busybox-static; nothing is skipped. Timings are logged, never asserted (the
 * dns benchmark measures them).
 */

import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, type Container, type Endpoint } from '../support/cluster.ts';
import { UPSTREAM_ANSWER } from '../support/dns-upstream-server.ts';
import { DnsProbe } from '../support/names-fixture.ts';
import { REPO_ROOT, run, startProcess, waitFor, type ManagedProcess } from '../support/process.ts';
import { OUTSIDE_ADDRESS } from '../support/sim-hosts.ts';

const RESOLVER = '169.254.53.53';
const QTYPE = { A: 1, PTR: 12, AAAA: 28 } as const;
const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;
const CONVERGE_MS = 60_000;
const PROBE = join(REPO_ROOT, 'test/support/dns-probe.ts');
const UPSTREAM_SERVER = join(REPO_ROOT, 'test/support/dns-upstream-server.ts');

let cluster: Cluster;
let upstream: ManagedProcess | undefined;
const probes: DnsProbe[] = [];
const netnsResolvConfs: string[] = [];
const c: Record<string, Container> = {};
const ep: Record<string, Endpoint> = {};

/** busybox nslookup in a container's namespace, asking the resolver address. */
async function nslookup(container: Container, name: string, type?: 'aaaa'): Promise<{ addresses: string[]; names: string[]; output: string }> {
  const r = await run('nsenter', [`--net=${container.path}`, 'busybox', 'nslookup', ...(type ? [`-type=${type}`] : []), name, RESOLVER], { allowFailure: true, timeoutMs: 30_000 });
  const output = r.stdout + r.stderr;
  const body = output.split(/\n\s*\n/).slice(1).join('\n');
  return { addresses: [...body.matchAll(/^Address:\s+(\S+)$/gm)].map((m) => m[1]!), names: [...body.matchAll(/name = (\S+)/g)].map((m) => m[1]!), output };
}

async function probeIn(container: Container): Promise<DnsProbe> {
  const child = spawn('nsenter', [`--net=${container.path}`, process.execPath, '--import', 'tsx', PROBE], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const probe = new DnsProbe(child);
  probes.push(probe);
  await probe.request({ op: 'raw', transport: 'udp', hex: '', server: '127.0.0.1', port: 9, timeoutMs: 1 });
  return probe;
}

const addressesOf = (a: { answers?: Array<{ data: string }> }): string[] => (a.answers ?? []).map((x) => x.data).sort();

test.before(async (t) => {
  t.timeout(6 * 60_000);
  cluster = await Cluster.create({
    backend: 'etcd',
    hosts: 4,
    ttl: '10s',
    ttlFor: (node) => (node === 'h4' ? '3s' : undefined),
    outside: true,
    storeOpts: ['kv.timeout=3000'],
    agentArgs: ['--dns-upstream', OUTSIDE_ADDRESS],
    progress: (m) => t.log(m),
  });
  upstream = startProcess('dns-upstream', process.execPath, ['--import', 'tsx', UPSTREAM_SERVER, OUTSIDE_ADDRESS, '53'], { netns: cluster.sim.outside!.name, cwd: REPO_ROOT });
  await waitFor('the upstream DNS server', () => upstream!.log().includes('listening'), 30_000, 100);
  const [h1, h2, h3, h4] = cluster.hosts;
  await cluster.kvnetOk(h1!, 'network', 'create', '--subnet', '10.71.1.0/24', 'multi');
  await cluster.kvnetOk(h2!, 'network', 'create', '--subnet', '10.71.2.0/24', 'other');
  await cluster.kvnetOk(h3!, 'network', 'create', '--subnet', '10.71.3.0/24', '--internal', 'secret');
  for (const [name, host] of [['c1', h1], ['c2', h2], ['c3', h3], ['b2', h2], ['i1', h1], ['i2', h2], ['c4', h4]] as const) c[name] = await cluster.addContainer(host!, name);
  ep.c1 = JSON.parse(await cluster.kvnetOk(h1!, 'network', 'connect', 'multi', '--netns', c.c1!.path, '--name', 'c1', '--alias', 'web')) as Endpoint;
  ep.c2 = await cluster.connect(c.c2!, 'multi');
  ep.c3 = await cluster.connect(c.c3!, 'multi');
  ep.c3b = await cluster.connect(c.c3!, 'other');
  ep.b2 = await cluster.connect(c.b2!, 'other');
  ep.i1 = await cluster.connect(c.i1!, 'secret');
  ep.i2 = await cluster.connect(c.i2!, 'secret');
  ep.c4 = await cluster.connect(c.c4!, 'multi');
});

test.after.always(async () => {
  for (const p of probes) p.child.kill('SIGKILL');
  for (const dir of netnsResolvConfs) rmSync(dir, { recursive: true, force: true });
  await upstream?.kill();
  await cluster?.teardown();
});

test.afterEach.always((t) => {
  if (!t.passed) t.log(cluster.diagnostics(40));
});

test.serial('names resolve across hosts: names, aliases, <name>.<network>, PTR; the route goes through the oldest kvnet interface only', async (t) => {
  t.is((await cluster.inspect(cluster.hosts[0]!, 'multi'))!.endpoints.find((e) => e.name === 'c1')!.aliases?.join(), 'web', 'the alias is in the record');
  const fromC2 = await nslookup(c.c2!, 'c1');
  t.deepEqual(fromC2.addresses, [ep.c1!.ip], fromC2.output);
  t.deepEqual((await nslookup(c.c2!, 'web')).addresses, [ep.c1!.ip], 'alias, from another host');
  t.deepEqual((await nslookup(c.c1!, 'c2')).addresses, [ep.c2!.ip], 'and back');
  t.deepEqual((await nslookup(c.c1!, 'c3.multi')).addresses, [ep.c3!.ip], '<name>.<network>');
  const ptr = await (await probeIn(c.c2!)).query(`${ep.c1!.ip.split('.').reverse().join('.')}.in-addr.arpa`, QTYPE.PTR);
  t.deepEqual(addressesOf(ptr), ['c1.multi'], 'PTR: <name>.<network>, as Docker answers it');
  // c3: on two networks, one route to the resolver (through eth0, its oldest endpoint's interface)
  const routes = (await cluster.exec(c.c3!.name, 'ip', '-4', 'route', 'show', `${RESOLVER}/32`)).stdout.trim().split('\n');
  t.deepEqual(routes, [`${RESOLVER} dev eth0 scope link `.trim()], 'one route, through eth0');

  // A netns user sets the resolver the way `ip netns exec` expects it: /etc/netns/<name>/resolv.conf.
  const dir = `/etc/netns/${c.c2!.name}`;
  mkdirSync(dir, { recursive: true });
  netnsResolvConfs.push(dir);
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${RESOLVER}\n`);
  const ping = await run('ip', ['netns', 'exec', c.c2!.name, 'ping', '-c', '1', '-W', '5', 'c1'], { allowFailure: true, timeoutMs: 30_000 });
  t.is(ping.code, 0, `ping c1 by name from c2 (another host) through glibc: ${ping.stdout}${ping.stderr}`);
  t.regex(ping.stdout, new RegExp(`PING c1 \\(${ep.c1!.ip.replace(/\./g, '\\.')}\\)`));
});

test.serial('isolation: names of a network do not reach a container not on it; a container on two networks resolves both', async (t) => {
  const probe = await probeIn(c.c2!);
  const b2 = await probe.query('b2');
  t.true(b2.ok, b2.error);
  t.deepEqual(addressesOf(b2), [], 'c2 (multi only) gets no address for b2 (other)');
  t.not(b2.rcode, RCODE.NOERROR, `not answered as a kvnet name (rcode ${b2.rcode}): forwarded upstream, which refuses it`);
  await waitFor('the upstream to see the forwarded question for b2', () => upstream!.log().includes(' b2 1'), 10_000, 100);
  const fromB2 = await nslookup(c.b2!, 'c1');
  t.deepEqual(fromB2.addresses, [], `b2 (other only) gets no address for c1: ${fromB2.output}`);
  t.deepEqual((await nslookup(c.c3!, 'b2')).addresses, [ep.b2!.ip], 'c3 (multi + other) resolves b2');
  t.deepEqual((await nslookup(c.c3!, 'c1')).addresses, [ep.c1!.ip], 'and c1');
  t.deepEqual((await nslookup(c.b2!, 'c3')).addresses, [ep.c3b!.ip], 'b2 gets c3\'s address on other, not on multi');
});

test.serial('internal network: its names resolve across hosts; other names are REFUSED and never reach the upstream', async (t) => {
  t.deepEqual((await nslookup(c.i1!, 'i2')).addresses, [ep.i2!.ip]);
  const probe = await probeIn(c.i2!);
  const before = upstream!.log();
  const out = await probe.query('leak.up.test');
  t.true(out.ok, out.error);
  t.is(out.rcode, RCODE.REFUSED);
  t.deepEqual(addressesOf(out), []);
  await new Promise((r) => setTimeout(r, 500));
  t.false(upstream!.log().slice(before.length).includes('leak.up.test'), 'nothing reached the upstream');
});

test.serial('other names are forwarded to --dns-upstream from the host; NXDOMAIN passes through', async (t) => {
  const probe = await probeIn(c.c2!);
  const a = await probe.query('fwd.up.test');
  t.deepEqual(addressesOf(a), [UPSTREAM_ANSWER]);
  const line = await waitFor('the forwarded query in the upstream log', () => upstream!.log().split('\n').find((l) => l.includes(' fwd.up.test 1')), 10_000, 100);
  t.is(line.split(' ')[2], cluster.hosts[1]!.address, 'asked from h2\'s own (host) namespace');
  t.is((await probe.query('nx.up.test')).rcode, RCODE.NXDOMAIN);
});

test.serial('freshness: a new name resolves on every other host once connect returns (polled); a removed one stops resolving everywhere', async (t) => {
  const [h1] = cluster.hosts;
  const c5 = await cluster.addContainer(h1!, 'c5');
  const probes2 = await Promise.all([probeIn(c.c2!), probeIn(c.c3!)]);
  const t0 = Date.now();
  const e5 = await cluster.connect(c5, 'multi', { name: 'c5' });
  const connected = Date.now() - t0;
  for (const [i, p] of probes2.entries()) {
    const seen = await waitFor(`c5 resolving on ${['h2', 'h3'][i]}`, async () => (addressesOf(await p.query('c5')).includes(e5.ip) ? Date.now() : undefined), CONVERGE_MS, 10);
    t.log(`c5 resolves on ${['h2', 'h3'][i]} ${seen - t0 - connected} ms after connect returned`);
  }
  // the new container resolves others at once (its listener and route were in place before connect returned)
  t.deepEqual((await nslookup(c5, 'c2')).addresses, [ep.c2!.ip]);
  const t1 = Date.now();
  await cluster.kvnetOk(h1!, 'network', 'disconnect', 'multi', 'c5');
  const t2 = Date.now();
  for (const [i, p] of probes2.entries()) {
    const gone = await waitFor(`c5 gone on ${['h2', 'h3'][i]}`, async () => (addressesOf(await p.query('c5')).length === 0 ? Date.now() : undefined), CONVERGE_MS, 10);
    t.log(`c5 stopped resolving on ${['h2', 'h3'][i]} ${gone - t2} ms after disconnect returned (the kvnet command took ${t2 - t1} ms)`);
  }
  await cluster.removeContainer(c5);
});

test.serial('the route moves to the next kvnet interface when its holder leaves the sandbox', async (t) => {
  const [, , h3] = cluster.hosts;
  await cluster.kvnetOk(h3!, 'network', 'disconnect', 'multi', 'c3');
  const next = ep.c3b!.ifname!;
  await waitFor(`the route through ${next}`, async () => (await cluster.exec(c.c3!.name, 'ip', '-4', 'route', 'show', `${RESOLVER}/32`)).stdout.includes(`dev ${next} `), 30_000, 100);
  t.deepEqual((await nslookup(c.c3!, 'b2')).addresses, [ep.b2!.ip], 'c3 still resolves names of other');
  t.deepEqual((await nslookup(c.c3!, 'c1')).addresses, [], 'and no longer those of multi');
  ep.c3 = await cluster.connect(c.c3!, 'multi');
  t.deepEqual((await nslookup(c.c1!, 'c3')).addresses, [ep.c3.ip]);
});

test.serial('a store outage and an agent restart do not stop resolution of known names', async (t) => {
  const [, h2] = cluster.hosts;
  const probe = await probeIn(c.c2!);
  const ask = async (): Promise<boolean> => addressesOf(await probe.query('c1', QTYPE.A, 'udp', { timeoutMs: 1000 })).includes(ep.c1!.ip);
  t.true(await ask());
  await cluster.stopStore();
  try {
    await waitFor('h2 to notice the outage', async () => (await cluster.kvnet(h2!, 'network', 'connect', 'multi', '--netns', c.c2!.path, '--name', 'x')).code !== 0, 30_000, 500);
    let answered = 0;
    for (let i = 0; i < 20; i++) if (await ask()) answered++;
    t.is(answered, 20, 'all 20 queries during the store outage answered from the last view');
  } finally {
    await cluster.startStore();
  }
  // agent restart on h2 under continuous queries: the resolver (its own process) keeps answering
  const status = JSON.parse(await cluster.kvnetOk(h2!, 'dns', 'status')) as { pid: number };
  let stop = false;
  let asked = 0;
  let failed = 0;
  const loop = (async () => {
    while (!stop) {
      asked++;
      if (!(await ask())) failed++;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await cluster.stopAgent(h2!);
  await new Promise((r) => setTimeout(r, 1000));
  await cluster.startAgent(h2!);
  stop = true;
  await loop;
  t.log(`${asked} queries across the agent restart, ${failed} unanswered`);
  t.is(failed, 0, 'every query across the agent restart answered');
  t.is((JSON.parse(await cluster.kvnetOk(h2!, 'dns', 'status')) as { pid: number }).pid, status.pid, 'the restarted agent fed the same resolver process');
  t.deepEqual((await nslookup(c.c2!, 'c3')).addresses, [ep.c3!.ip]);
});

test.serial('malformed and oversized packets get no crash: the resolver keeps answering over UDP and TCP', async (t) => {
  const probe = await probeIn(c.c2!);
  const header = (flags: string, qd = '0001'): string => `0001${flags}${qd}000000000000`.slice(0, 24);
  const bad = [
    '', 'ff', '0001', header('0100', '0000'), // shorter than a header; no question
    `${header('0100')}3f6331`, // a label longer than the packet
    `${header('0100')}c00c00010001`, // a name that points at itself
    `${header('2800')}0263310000010001`, // opcode UPDATE
    'ab'.repeat(60_000), // 60 kB of junk
  ];
  for (const hex of bad) await probe.request({ op: 'raw', transport: 'udp', hex, timeoutMs: 300 });
  for (const hex of bad.slice(0, 7)) {
    const len = (hex.length / 2).toString(16).padStart(4, '0');
    await probe.request({ op: 'raw', transport: 'tcp', hex: len + hex, timeoutMs: 300 });
  }
  await probe.request({ op: 'raw', transport: 'tcp', hex: 'ffff' + '00'.repeat(10), timeoutMs: 300 });
  const after = await probe.query('c1');
  t.deepEqual(addressesOf(after), [ep.c1!.ip], 'UDP');
  t.deepEqual(addressesOf(await probe.query('c1', QTYPE.A, 'tcp')), [ep.c1!.ip], 'TCP');
});

test.serial('a dead host\'s names stop resolving everywhere once it is reaped', async (t) => {
  const [h1, , , h4] = cluster.hosts;
  const probe = await probeIn(c.c1!);
  t.deepEqual(addressesOf(await probe.query('c4')), [ep.c4!.ip], 'c4 (on h4) resolves from h1');
  const t0 = Date.now();
  await cluster.destroyHost(h4!);
  const gone = await waitFor('c4 gone from h1', async () => (addressesOf(await probe.query('c4')).length === 0 ? Date.now() : undefined), CONVERGE_MS, 20);
  t.log(`c4 stopped resolving ${gone - t0} ms after h4 died (TTL 3 s + reaping grace)`);
  const net = await cluster.inspect(h1!, 'multi');
  t.false(net!.endpoints.some((e) => e.name === 'c4'), 'reaped from the store');
  t.deepEqual((await nslookup(c.c2!, 'c4')).addresses, [], 'and gone on h2 too');
});
