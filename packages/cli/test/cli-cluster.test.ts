/**
 * The `kvnet` CLI against two real agents on simulated hosts (network namespaces on one underlay)
 * sharing an embedded store: the seed flow (create on h1, listed on h2, containers on both hosts
 * ping each other), the error paths a user hits, and removal. Needs root; skipped otherwise.
 */

import test from 'ava';
import { join } from 'node:path';
import { createSimNetwork, type SimNetwork, type SimContainer } from '../../../test/support/sim-hosts.ts';
import { startSimAgent, waitAgentReady } from '../../../test/support/docker-agents.ts';
import { makeTempDir, removeTempDir, run, runId, waitFor, REPO_ROOT, type ManagedProcess } from '../../../test/support/process.ts';

const MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');
const isRoot = process.getuid?.() === 0;
const rt = isRoot ? test.serial : test.skip;

const id = runId();
let sim: SimNetwork | undefined;
let dir = '';
const agents: ManagedProcess[] = [];
const sockets: string[] = [];
let c1: SimContainer;
let c2: SimContainer;

function kvnet(host: number, ...args: string[]) {
  return run('node', ['--import', 'tsx', MAIN, '--socket', sockets[host]!, ...args], { allowFailure: true, timeoutMs: 120_000 });
}

function startAgent(i: number): ManagedProcess {
  const p = startSimAgent({ id, dir, index: i, host: sim!.hosts[i]!, apiSocket: sockets[i]!, store: `local://${dir}/store.db`, ttl: '3s' });
  agents[i] = p;
  return p;
}

test.before(async () => {
  if (!isRoot) return;
  dir = makeTempDir(`cli-${id}`);
  sim = await createSimNetwork({ hosts: 2, prefix: id });
  for (let i = 0; i < 2; i++) sockets.push(join(dir, `h${i + 1}.sock`));
  for (let i = 0; i < 2; i++) startAgent(i);
  for (const a of agents) await waitAgentReady(a, 0, 60_000);
  c1 = await sim.addContainer(sim.hosts[0]!, 'c1');
  c2 = await sim.addContainer(sim.hosts[1]!, 'c2');
});

let failed = false;
test.afterEach.always((t) => {
  if (!t.passed) failed = true;
});

test.after.always(async (t) => {
  for (const a of agents) {
    if (!a) continue;
    await a.stop(5_000);
    if (failed) t.log(a.log().slice(-4000));
  }
  await sim?.destroy();
  if (dir) removeTempDir(dir);
});

rt('node ls on each host lists both nodes', async (t) => {
  for (const h of [0, 1]) {
    const r = await waitFor('two nodes', async () => {
      const x = await kvnet(h, 'node', 'ls', '--format', 'json');
      return x.code === 0 && JSON.parse(x.stdout).length === 2 ? x : undefined;
    }, 20_000, 200);
    const names = (JSON.parse(r.stdout) as Array<{ name: string; advertise: string }>).map((n) => `${n.name}@${n.advertise}`).sort();
    t.deepEqual(names, ['h1@198.18.0.1', 'h2@198.18.0.2']);
  }
  const table = await kvnet(0, 'node', 'ls');
  t.regex(table.stdout, /^NAME\s+STATE\s+ADVERTISE\s+ENDPOINTS\s+VERSION\nh1 \*\s+alive\s+198\.18\.0\.1\s+0\s+\S+\nh2\s+alive\s+198\.18\.0\.2\s+0\s+\S+\n$/);
});

rt('network created on h1 is listed on h2; containers on both hosts ping each other', async (t) => {
  const created = await kvnet(0, 'network', 'create', '--subnet', '10.77.1.0/24', '--label', 'team=a', 'multi');
  t.is(created.code, 0, created.stderr);
  const nid = created.stdout.trim();
  t.regex(nid, /^[0-9a-f]{64}$/);
  const listed = await waitFor('multi listed on h2', async () => {
    const r = await kvnet(1, 'network', 'ls');
    return r.stdout.includes('multi') ? r : undefined;
  }, 20_000, 100);
  t.regex(listed.stdout, new RegExp(`${nid.slice(0, 12)}\\s+multi\\s+\\d+\\s+10\\.77\\.1\\.0/24\\s+0`));

  const e1 = await kvnet(0, 'network', 'connect', 'multi', '--netns', c1.path, '--name', 'c1');
  t.is(e1.code, 0, e1.stderr);
  const ep1 = JSON.parse(e1.stdout) as { ip: string; node: string; mac: string; address: string };
  t.is(ep1.node, 'h1');
  t.regex(ep1.address, /^10\.77\.1\.\d+\/24$/);
  const e2 = await kvnet(1, 'network', 'connect', 'multi', '--netns', c2.path, '--name', 'c2', '--ip', '10.77.1.50');
  t.is(e2.code, 0, e2.stderr);
  const ep2 = JSON.parse(e2.stdout) as { ip: string; mac: string };
  t.is(ep2.ip, '10.77.1.50');
  t.is(ep2.mac, '02:42:0a:4d:01:32');

  t.true(await sim!.ping(c1.name, ep2.ip, { tries: 20 }), 'c1 → c2');
  t.true(await sim!.ping(c2.name, ep1.ip, { tries: 20 }), 'c2 → c1');

  const inspect = await kvnet(1, 'network', 'inspect', 'multi');
  t.is(inspect.code, 0);
  const [net] = JSON.parse(inspect.stdout) as Array<{ id: string; labels: Record<string, string>; endpoints: Array<{ name: string; node: string }> }>;
  t.is(net!.id, nid);
  t.deepEqual(net!.labels, { team: 'a' });
  t.deepEqual(net!.endpoints.map((e) => `${e.name}@${e.node}`), ['c1@h1', 'c2@h2']);
});

rt('a connect repeated with the same request answers with the endpoint it made (a retry after an unknown outcome); the same name with anything else is a conflict', async (t) => {
  const first = JSON.parse((await kvnet(1, 'network', 'inspect', 'multi')).stdout)[0].endpoints.find((e: { name: string }) => e.name === 'c2') as { id: string };
  const again = await kvnet(1, 'network', 'connect', 'multi', '--netns', c2.path, '--name', 'c2', '--ip', '10.77.1.50');
  t.is(again.code, 0, again.stderr);
  const ep = JSON.parse(again.stdout) as { id: string; ip: string; mac: string; node: string };
  t.deepEqual([ep.id, ep.ip, ep.mac, ep.node], [first.id, '10.77.1.50', '02:42:0a:4d:01:32', 'h2'], 'the same endpoint, not a second one');
  const otherIp = await kvnet(1, 'network', 'connect', 'multi', '--netns', c2.path, '--name', 'c2', '--ip', '10.77.1.51');
  t.is(otherIp.code, 1);
  t.is(otherIp.stderr.trim(), 'kvnet: endpoint with name c2 already exists in network multi');
  const otherHost = await kvnet(0, 'network', 'connect', 'multi', '--netns', c2.path, '--name', 'c2');
  t.is(otherHost.code, 1, 'another host\'s agent does not take it for its own');
  t.is(otherHost.stderr.trim(), 'kvnet: endpoint with name c2 already exists in network multi');
  const net = JSON.parse((await kvnet(1, 'network', 'inspect', 'multi')).stdout)[0] as { endpoints: Array<{ name: string }> };
  t.deepEqual(net.endpoints.map((e) => e.name).sort(), ['c1', 'c2']);
  t.true(await sim!.ping(c1.name, '10.77.1.50', { tries: 20 }), 'c1 → c2 still');
});

rt('bad input gets a clear error, a non-zero exit, and changes nothing', async (t) => {
  const dupName = await kvnet(1, 'network', 'create', 'multi');
  t.is(dupName.code, 1);
  t.is(dupName.stderr.trim(), 'kvnet: network with name multi already exists');

  const badCidr = await kvnet(0, 'network', 'create', '--subnet', '10.1.2.0/33', 'bad');
  t.is(badCidr.code, 2, 'an invalid flag value is a usage error');
  t.regex(badCidr.stderr, /^kvnet: invalid subnet "10\.1\.2\.0\/33"/);

  const overlap = await kvnet(0, 'network', 'create', '--subnet', '10.77.0.0/16', 'overlapping');
  t.is(overlap.code, 1);
  t.regex(overlap.stderr, /overlaps/);

  const noNet = await kvnet(0, 'network', 'connect', 'nosuch', '--netns', c1.path);
  t.is(noNet.code, 1);
  t.regex(noNet.stderr, /no such network: nosuch/);

  const badNetns = await kvnet(0, 'network', 'connect', 'multi', '--netns', `/run/netns/${id}-missing`);
  t.is(badNetns.code, 2);
  t.regex(badNetns.stderr, /invalid netns .*no such file/);

  const outside = await kvnet(0, 'network', 'connect', 'multi', '--netns', c1.path, '--name', 'x', '--ip', '10.9.9.9');
  t.is(outside.code, 2);
  t.regex(outside.stderr, /10\.9\.9\.9.*outside subnet 10\.77\.1\.0\/24/);

  const dupEp = await kvnet(0, 'network', 'connect', 'multi', '--netns', c1.path, '--name', 'c2');
  t.is(dupEp.code, 1);
  t.is(dupEp.stderr.trim(), 'kvnet: endpoint with name c2 already exists in network multi');

  const usage = await kvnet(0, 'network', 'connect', 'multi');
  t.is(usage.code, 2);
  t.regex(usage.stderr, /^kvnet: .*--netns/);

  const inUse = await kvnet(1, 'network', 'rm', 'multi');
  t.is(inUse.code, 1);
  t.regex(inUse.stderr, /network multi has active endpoints: c1 \(on h1\), c2 \(on h2\)/);

  const inspect = await kvnet(0, 'network', 'inspect', 'multi');
  const [net] = JSON.parse(inspect.stdout) as Array<{ endpoints: unknown[] }>;
  t.is(net!.endpoints.length, 2, 'nothing was added');
  const ls = await kvnet(0, 'network', 'ls', '--format', 'json');
  t.deepEqual((JSON.parse(ls.stdout) as Array<{ name: string }>).map((n) => n.name), ['multi']);
});

rt('two hosts creating one name at once: exactly one wins', async (t) => {
  const [a, b] = await Promise.all([kvnet(0, 'network', 'create', 'race'), kvnet(1, 'network', 'create', 'race')]);
  t.deepEqual([a.code, b.code].sort(), [0, 1], `${a.stderr} ${b.stderr}`);
  t.is((a.code === 1 ? a : b).stderr.trim(), 'kvnet: network with name race already exists');
  const ls = await kvnet(0, 'network', 'ls', '--format', 'json');
  t.is((JSON.parse(ls.stdout) as Array<{ name: string }>).filter((n) => n.name === 'race').length, 1);
});

rt('one container on two networks gets eth0 and eth1; names in a sandbox cannot clash', async (t) => {
  const r = await kvnet(0, 'network', 'connect', 'race', '--netns', c1.path, '--name', 'c1b');
  t.is(r.code, 0, r.stderr);
  t.is(JSON.parse(r.stdout).ifname, 'eth1');
  const links = await sim!.exec(c1.name, 'ip', '-o', 'link');
  t.regex(links.stdout, /eth0@/);
  t.regex(links.stdout, /eth1@/);
  const clash = await kvnet(0, 'network', 'connect', 'race', '--netns', c1.path, '--name', 'c1c', '--ifname', 'eth0');
  t.is(clash.code, 1);
  t.is(clash.stderr.trim(), `kvnet: interface eth0 in netns ${c1.path} is already used by endpoint c1 of network multi`);
  t.is((await kvnet(0, 'network', 'disconnect', 'race', 'c1b')).code, 0);
  const rm = await kvnet(1, 'network', 'rm', 'race');
  t.is(rm.code, 0, rm.stderr);
});

rt('endpoint ls, ls -q/--filter/--format, inspect -f, version and prune against the real agents', async (t) => {
  const eps = await kvnet(1, 'endpoint', 'ls', '--format', '{{.Network}} {{.Name}} {{.Node}} {{.IP}} {{.MAC}}');
  t.is(eps.code, 0, eps.stderr);
  t.regex(eps.stdout, /^multi c1 h1 10\.77\.1\.\d+ 02:42:0a:4d:01:[0-9a-f]{2}\nmulti c2 h2 10\.77\.1\.50 02:42:0a:4d:01:32\n$/);
  t.regex((await kvnet(0, 'endpoint', 'ls', '-q', '--filter', 'node=h2')).stdout, /^[0-9a-f]{12}\n$/);
  t.regex((await kvnet(0, 'network', 'ls', '-q', '--filter', 'name=mul')).stdout, /^[0-9a-f]{12}\n$/);
  t.regex((await kvnet(0, 'network', 'ls', '-q', '--no-trunc')).stdout, /^[0-9a-f]{64}\n$/);
  t.is((await kvnet(0, 'network', 'ls', '--filter', 'label=team=a', '--format', '{{.Name}} {{.Label "team"}}')).stdout, 'multi a\n');
  t.is((await kvnet(0, 'network', 'ls', '--filter', 'label=team=b', '--format', '{{.Name}}')).stdout, '');
  t.is((await kvnet(1, 'network', 'inspect', '-f', '{{.Name}} {{.Subnet}} {{len .Endpoints}}', 'multi')).stdout, 'multi 10.77.1.0/24 2\n');
  const version = await kvnet(0, 'version', '-f', '{{.Agent.Node}} {{.Agent.StoreState}} {{eq .Agent.Version .Client.Version}}');
  t.is(version.stdout, 'h1 reachable true\n', version.stderr);

  t.is((await kvnet(0, 'network', 'create', 'empty1')).code, 0);
  await waitFor('empty1 on h2', async () => (await kvnet(1, 'network', 'ls', '--format', '{{.Name}}')).stdout.includes('empty1'), 20_000, 200);
  const pruned = await kvnet(1, 'network', 'prune', '-f');
  t.is(pruned.code, 0, pruned.stderr);
  t.is(pruned.stdout, 'Deleted Networks:\nempty1\n');
  t.is((await kvnet(0, 'network', 'ls', '--format', '{{.Name}}')).stdout, 'multi\n', 'the network with endpoints stays');
});

rt('disconnect from the other host, then rm; the kernel is cleaned on both hosts', async (t) => {
  t.is((await kvnet(1, 'network', 'disconnect', 'multi', 'c1')).code, 0, 'disconnect of a remote endpoint');
  t.is((await kvnet(1, 'network', 'disconnect', 'multi', 'c2')).code, 0);
  const rm = await kvnet(0, 'network', 'rm', 'multi');
  t.is(rm.code, 0, rm.stderr);
  t.is(rm.stdout.trim(), 'multi');
  const gone = await waitFor('overlay namespaces removed', async () => {
    const r = await run('ip', ['netns', 'list']);
    return !r.stdout.includes(`${id}1-`) && !r.stdout.includes(`${id}2-`);
  }, 20_000, 200);
  t.true(gone);
  const c1Links = await sim!.exec(c1.name, 'ip', '-o', 'link');
  t.notRegex(c1Links.stdout, /eth0/);
  const after = await kvnet(1, 'network', 'ls', '--format', 'json');
  t.deepEqual(JSON.parse(after.stdout), []);
});
