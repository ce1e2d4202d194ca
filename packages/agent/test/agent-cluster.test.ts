/**
 * Real agents on two simulated hosts sharing an embedded store, driven through the local API:
 * input validation over the socket, egress through the gateway bridge, metrics and health, a
 * restart that leaves traffic alone, an endpoint deleted while its agent was down, and a killed
 * agent whose endpoints are reaped by the survivor and restored when it comes back.
 * Needs root; skipped otherwise. Timings are never asserted, only eventual states.
 */

import test from 'ava';
import { unixRequest } from '../src/unix-http.ts';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSimNetwork, OUTSIDE_ADDRESS, type SimContainer, type SimNetwork } from '../../../test/support/sim-hosts.ts';
import { startSimAgent, waitAgentReady } from '../../../test/support/docker-agents.ts';
import { makeTempDir, removeTempDir, run, runId, startProcess, waitFor, REPO_ROOT, type ManagedProcess } from '../../../test/support/process.ts';

const MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');
const isRoot = process.getuid?.() === 0;
const rt = isRoot ? test.serial : test.skip;

const id = runId();
let sim: SimNetwork | undefined;
let dir = '';
const agents: Array<ManagedProcess | undefined> = [];
const sockets: string[] = [];
let c1: SimContainer;
let c2: SimContainer;
let c2ip = '';

interface Answer {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

async function api(host: number, method: string, path: string, body?: unknown): Promise<Answer> {
  const r = await unixRequest({ socketPath: sockets[host]!, method, path, body, timeoutMs: 60_000 });
  return { status: r.status, body: r.body };
}

async function startAgent(i: number): Promise<ManagedProcess> {
  const host = sim!.hosts[i]!;
  const p = startSimAgent({
    id, dir, index: i, host, apiSocket: sockets[i]!, store: `local://${dir}/store.db`,
    advertise: `${host.address}:2376`, ttl: '3s', gatewayBridge: `${id}gw`, metrics: true, logName: `agent-h${i + 1}-${Date.now()}.log`,
  });
  agents[i] = p;
  await waitAgentReady(p, 0, 60_000);
  return p;
}

/** Fetches a path of the agent's loopback metrics listener from inside its host namespace. */
async function scrape(host: number, path: string): Promise<{ code: string; body: string }> {
  const r = await run('curl', ['-s', '-o', '-', '-w', '\n%{http_code}', `http://127.0.0.1:9473${path}`], { netns: sim!.hosts[host]!.name, allowFailure: true });
  const lines = r.stdout.trimEnd().split('\n');
  return { code: lines.pop() ?? '', body: lines.join('\n') };
}

async function neighbours(host: number, nid: string): Promise<string> {
  return (await run('ip', ['-n', `${id}${host + 1}-${nid}`, 'neigh', 'show', 'dev', 'vxlan0'], { allowFailure: true })).stdout;
}

test.before(async () => {
  if (!isRoot) return;
  dir = makeTempDir(`agent-${id}`);
  sim = await createSimNetwork({ hosts: 2, prefix: id, outside: true });
  for (let i = 0; i < 2; i++) sockets.push(join(dir, `h${i + 1}.sock`));
  await Promise.all([startAgent(0), startAgent(1)]);
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
    if (failed) t.log(a.log().slice(-3000));
  }
  await sim?.destroy();
  if (dir) removeTempDir(dir);
});

rt('the API validates input and names the field and value', async (t) => {
  const status = await api(0, 'GET', '/v1/status');
  t.is(status.status, 200);
  t.like(status.body, { node: 'h1', advertise: '198.18.0.1', ready: true });

  const bad = await api(0, 'POST', '/v1/networks', { name: 'no spaces', subnet: '10.0.0.0/40', extra: 1 });
  t.is(bad.status, 400);
  t.is(bad.body.code, 'KVNET_INVALID_INPUT');
  t.regex(bad.body.error, /invalid name "no spaces"/);
  t.regex(bad.body.error, /invalid subnet "10\.0\.0\.0\/40"/);
  t.regex(bad.body.error, /unknown field "extra"/);

  const notJson = (await unixRequest({ socketPath: sockets[0]!, method: 'POST', path: '/v1/networks', rawBody: '{nope', timeoutMs: 10_000 })).status;
  t.is(notJson, 400);

  t.is((await api(0, 'GET', '/v1/networks/nosuch')).status, 404);
  t.is((await api(0, 'GET', '/v2/whatever')).status, 404);
  const badConnect = await api(0, 'POST', '/v1/networks/nosuch/endpoints', { netns: 'relative/path' });
  t.is(badConnect.status, 400);
  t.regex(badConnect.body.error, /invalid netns "relative\/path"/);
});

rt('a second agent claiming a live node\'s advertise address is refused, naming both nodes', async (t) => {
  const p = startProcess(
    `agent-${id}-dup`,
    'node',
    ['--import', 'tsx', MAIN, 'agent', '--cluster-store', `local://${dir}/store.db`, '--cluster-advertise', 'eth0', '--node-name', 'h3',
      '--state-dir', join(dir, 'state-dup'), '--socket', join(dir, 'dup.sock'), '--metrics-addr', 'off', '--name-prefix', `${id}9`],
    { netns: sim!.hosts[0]!.name, cwd: REPO_ROOT, logFile: join(dir, 'agent-dup.log') },
  );
  t.is(await p.exited, 1);
  t.regex(p.log(), /kvnet: advertise address 198\.18\.0\.1 is already claimed by live node h1; this node h3 cannot use it too/);
  const nodes = await api(1, 'GET', '/v1/nodes');
  t.deepEqual(nodes.body.map((n: { name: string }) => n.name), ['h1', 'h2']);
});

rt('containers on two hosts ping each other, and reach the outside through the gateway bridge', async (t) => {
  const net = await api(0, 'POST', '/v1/networks', { name: 'web', subnet: '10.88.0.0/24' });
  t.is(net.status, 201, JSON.stringify(net.body));
  const e1 = await api(0, 'POST', '/v1/networks/web/endpoints', { netns: c1.path, name: 'c1' });
  t.is(e1.status, 201, JSON.stringify(e1.body));
  const e2 = await api(1, 'POST', '/v1/networks/web/endpoints', { netns: c2.path, name: 'c2' });
  t.is(e2.status, 201, JSON.stringify(e2.body));
  c2ip = e2.body.ip;
  t.true(await sim!.ping(c1.name, c2ip, { tries: 20 }));
  t.true(await sim!.ping(c2.name, e1.body.ip, { tries: 20 }));
  const route = await sim!.exec(c1.name, 'ip', 'route', 'show', 'default');
  t.regex(route.stdout, /default via 172\.\d+\.\d+\.\d+ dev eth1/);
  t.true(await sim!.ping(c1.name, OUTSIDE_ADDRESS, { tries: 10 }), 'egress through the gateway bridge');

  const metrics = await scrape(0, '/metrics');
  t.is(metrics.code, '200');
  t.regex(metrics.body, /^kvnet_peers_programmed 1$/m);
  t.regex(metrics.body, /^kvnet_store_watches 4$/m, 'the embedded store: networks, endpoints, nodes and reaped, one watch each');
  for (const name of ['kvnet_reconcile_duration_seconds_count', 'kvnet_store_errors_total', 'kvnet_watch_resyncs_total', 'kvnet_store_watches', 'kvnet_reaped_endpoints_total', 'process_resident_memory_bytes']) {
    t.regex(metrics.body, new RegExp(`^${name} `, 'm'), name);
  }
  const version = JSON.parse(readFileSync(join(REPO_ROOT, 'packages/agent/package.json'), 'utf8')).version as string;
  t.regex(metrics.body, new RegExp(`^kvnet_build_info\\{version="${version.replaceAll('.', '\\.')}",commit="source",nodejs="${process.versions.node.replaceAll('.', '\\.')}"\\} 1$`, 'm'), 'kvnet_build_info names the build (run from the sources here)');
  t.is((await scrape(0, '/healthz')).code, '200');
  t.is((await scrape(0, '/readyz')).code, '200');
});

rt('restarting an agent leaves the data plane alone', async (t) => {
  await agents[0]!.stop(5_000);
  t.is(await agents[0]!.exited, 0, 'clean exit on SIGTERM');
  // While h1's agent is down its containers keep talking.
  t.true(await sim!.ping(c1.name, c2ip, { tries: 3 }));
  await startAgent(0);
  t.true(await sim!.ping(c1.name, c2ip, { tries: 3 }));
  const log = agents[0]!.log();
  t.notRegex(log, /"changes":[1-9]/, 'nothing to change in the kernel after a restart');
});

rt('an agent stopped for longer than its TTL is not reaped: it announced a restart', async (t) => {
  await agents[0]!.stop(5_000);
  // Its node record lapses after the 3 s TTL; the reaper would act 2 s later without the announcement.
  // node ls lists every node the cluster knows: h1 is there, as restarting (not alive, not reaped)
  const states = await waitFor('h1 no longer live', async () => {
    const nodes = (await api(1, 'GET', '/v1/nodes')).body as Array<{ name: string; state: string }>;
    return nodes.filter((n) => n.state === 'alive').length === 1 ? nodes : undefined;
  }, 20_000, 200);
  t.deepEqual(states.map((n) => `${n.name}:${n.state}`), ['h1:restarting', 'h2:alive']);
  await new Promise((r) => setTimeout(r, 4_000));
  const net = await api(1, 'GET', '/v1/networks/web');
  t.deepEqual(net.body.endpoints.map((e: { name: string }) => e.name), ['c1', 'c2']);
  t.true(await sim!.ping(c2.name, net.body.endpoints[0].ip, { tries: 3 }), 'h2 still reaches c1');
  await startAgent(0);
  t.true(await sim!.ping(c1.name, c2ip, { tries: 3 }));
});

rt('an endpoint deleted while its agent is down is removed from the kernel when it starts', async (t) => {
  await agents[1]!.stop(5_000);
  const del = await api(0, 'DELETE', '/v1/networks/web/endpoints/c2');
  t.is(del.status, 204, JSON.stringify(del.body));
  await startAgent(1);
  await waitFor('c2 eth0 removed', async () => !(await sim!.exec(c2.name, 'ip', '-o', 'link')).stdout.includes('eth0'), 20_000, 200);
  const nid = (await api(0, 'GET', '/v1/networks/web')).body.id as string;
  await waitFor('h1 dropped the peer', async () => !(await neighbours(0, nid)).includes(c2ip), 20_000, 200);
  t.pass();
});

rt('a killed agent\'s endpoints are reaped by the survivor and restored when it returns', async (t) => {
  const e2 = await api(1, 'POST', '/v1/networks/web/endpoints', { netns: c2.path, name: 'c2' });
  t.is(e2.status, 201, JSON.stringify(e2.body));
  const ip = e2.body.ip as string;
  const nid = e2.body.network as string;
  t.true(await sim!.ping(c1.name, ip, { tries: 20 }));

  await agents[1]!.kill();
  const reaped = await waitFor('c2 reaped', async () => {
    const n = await api(0, 'GET', '/v1/networks/web');
    return n.body.endpoints.length === 1 ? n : undefined;
  }, 30_000, 200);
  t.deepEqual(reaped.body.endpoints.map((e: { name: string }) => e.name), ['c1']);
  await waitFor('h1 dropped the dead peer', async () => !(await neighbours(0, nid)).includes(ip), 20_000, 200);
  t.regex((await scrape(0, '/metrics')).body, /^kvnet_reaped_endpoints_total 1$/m);
  const nodes = await api(0, 'GET', '/v1/nodes');
  t.deepEqual(nodes.body.map((n: { name: string; state: string }) => `${n.name}:${n.state}`), ['h1:alive'], 'a reaped node without endpoints is gone from node ls');

  // h2 comes back with c2's namespace still there: it re-creates the endpoint with the same address.
  await startAgent(1);
  const back = await waitFor('c2 restored', async () => {
    const n = await api(0, 'GET', '/v1/networks/web');
    return n.body.endpoints.find((e: { name: string }) => e.name === 'c2');
  }, 30_000, 200);
  t.is(back.ip, ip);
  t.true(await sim!.ping(c1.name, ip, { tries: 20 }));
});
