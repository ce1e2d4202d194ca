/**
 * Two real agents on simulated hosts with a real etcd (in the underlay namespace): while etcd is
 * stopped, existing traffic keeps flowing, reads are served from the agents' views, writes fail with
 * the store's message and /readyz says why; when etcd is back the agents converge without a restart
 * and nothing is reaped. While etcd is frozen (SIGSTOP: no connection breaks, no watch errors),
 * /readyz and `kvnet status` still tell the truth, and local API and Docker plugin calls are refused
 * at once with the same message. Needs root and etcd; skipped otherwise.
 */

import test from 'ava';
import { join } from 'node:path';
import { unixRequest } from '../src/unix-http.ts';
import { startServer, type KvServer } from '../../../test/support/kv-servers.ts';
import { createSimNetwork, type SimContainer, type SimNetwork } from '../../../test/support/sim-hosts.ts';
import { makeTempDir, removeTempDir, run, runId, startProcess, waitFor, REPO_ROOT, type ManagedProcess } from '../../../test/support/process.ts';

const MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');
const ETCD_ADDRESS = '198.18.255.254';
const haveEtcd = (await run('sh', ['-c', 'command -v etcd'], { allowFailure: true })).code === 0;
const rt = process.getuid?.() === 0 && haveEtcd ? test.serial : test.skip;

const id = runId();
let sim: SimNetwork | undefined;
let etcd: KvServer | undefined;
let dir = '';
const agents: ManagedProcess[] = [];
const sockets: string[] = [];
let failed = false;

function kvnet(host: number, ...args: string[]) {
  return run('node', ['--import', 'tsx', MAIN, '--socket', sockets[host]!, ...args], { allowFailure: true, timeoutMs: 120_000 });
}

async function readyz(host: number): Promise<string> {
  const r = await run('curl', ['-s', '-w', ' %{http_code}', 'http://127.0.0.1:9473/readyz'], { netns: sim!.hosts[host]!.name, allowFailure: true });
  return r.stdout.trim();
}

test.before(async () => {
  if (!(process.getuid?.() === 0 && haveEtcd)) return;
  dir = makeTempDir(`outage-${id}`);
  sim = await createSimNetwork({ hosts: 2, prefix: id });
  await run('ip', ['-n', sim.underlay, 'addr', 'add', `${ETCD_ADDRESS}/15`, 'dev', 'ul0']);
  etcd = await startServer('etcd', { netns: sim.underlay, host: ETCD_ADDRESS });
  for (let i = 0; i < 2; i++) {
    sockets.push(join(dir, `h${i + 1}.sock`));
    const p = startProcess(`agent-${id}-h${i + 1}`, 'node', [
      '--import', 'tsx', MAIN, 'agent',
      '--cluster-store', etcd.url(`kvnet${id}`),
      '--cluster-advertise', 'eth0', '--node-name', `h${i + 1}`, '--state-dir', join(dir, `state-h${i + 1}`),
      '--socket', sockets[i]!, '--ttl', '4s', '--name-prefix', `${id}${i + 1}`, '--gateway-bridge', 'none',
      '--docker-plugin', join(dir, `h${i + 1}-plugin.sock`), '--docker-socket', 'off',
    ], { netns: sim.hosts[i]!.name, cwd: REPO_ROOT, logFile: join(dir, `agent-h${i + 1}.log`) });
    agents.push(p);
  }
  for (const a of agents) await waitFor(`${a.name} ready`, () => {
    if (a.child.exitCode !== null) throw new Error(a.log());
    return a.log().includes('"msg":"agent ready"');
  }, 60_000, 100);
});

test.afterEach.always((t) => {
  if (!t.passed) failed = true;
});

test.after.always(async (t) => {
  for (const a of agents) {
    await a.stop(5_000);
    if (failed) t.log(a.log().slice(-5000));
  }
  await etcd?.dispose();
  await sim?.destroy();
  if (dir) removeTempDir(dir);
});

rt('traffic flows and writes fail clearly while etcd is down; the cluster converges when it returns', async (t) => {
  t.is((await kvnet(0, 'network', 'create', '--subnet', '10.66.0.0/24', 'ov')).code, 0);
  const c1: SimContainer = await sim!.addContainer(sim!.hosts[0]!, 'c1');
  const c2: SimContainer = await sim!.addContainer(sim!.hosts[1]!, 'c2');
  const c3: SimContainer = await sim!.addContainer(sim!.hosts[1]!, 'c3');
  const e1 = await kvnet(0, 'network', 'connect', 'ov', '--netns', c1.path, '--name', 'c1');
  t.is(e1.code, 0, e1.stderr);
  const e2 = await kvnet(1, 'network', 'connect', 'ov', '--netns', c2.path, '--name', 'c2');
  t.is(e2.code, 0, e2.stderr);
  const ip2 = JSON.parse(e2.stdout).ip as string;
  t.true(await sim!.ping(c1.name, ip2, { tries: 20 }));

  await etcd!.stop();
  const create = await kvnet(0, 'network', 'create', 'during-outage');
  t.is(create.code, 1);
  t.regex(create.stderr, /^kvnet: cluster store etcd:\/\/198\.18\.255\.254:\d+\/kvnet\w+ is unavailable/);
  const ls = await kvnet(1, 'network', 'ls', '--format', 'json');
  t.is(ls.code, 0, 'reads are served from the agent\'s view');
  t.deepEqual(JSON.parse(ls.stdout).map((n: { name: string }) => n.name), ['ov']);
  await waitFor('readyz says the store is unreachable', async () => /is unreachable since \S+Z \(\d+ s\).*\s503$/s.test(await readyz(0)), 30_000, 200);
  // Longer than the TTL: leases may lapse; nobody may tear anything down.
  for (let i = 0; i < 8; i++) t.true(await sim!.ping(c1.name, ip2, { waitS: 1 }), `ping ${i} during the outage`);

  await etcd!.start();
  await waitFor('readyz ok again', async () => /^ready\s+200$/.test(await readyz(0)) && /^ready\s+200$/.test(await readyz(1)), 60_000, 200);
  const e3 = await waitFor('connect after the outage', async () => {
    const r = await kvnet(1, 'network', 'connect', 'ov', '--netns', c3.path, '--name', 'c3');
    return r.code === 0 ? r : undefined;
  }, 30_000, 500);
  const ip3 = JSON.parse(e3.stdout).ip as string;
  t.true(await sim!.ping(c1.name, ip3, { tries: 20 }), 'new endpoint reachable from the other host');
  t.true(await sim!.ping(c1.name, ip2, { tries: 3 }), 'old endpoint still reachable');
  // Nobody was reaped: both nodes registered again in time.
  await waitFor('both nodes live', async () => {
    const r = await kvnet(0, 'node', 'ls', '--format', 'json');
    return r.code === 0 && (JSON.parse(r.stdout) as Array<{ state: string }>).filter((n) => n.state === 'alive').length === 2;
  }, 30_000, 200);
  const inspect = JSON.parse((await kvnet(0, 'network', 'inspect', 'ov')).stdout);
  t.deepEqual(inspect[0].endpoints.map((e: { name: string }) => e.name), ['c1', 'c2', 'c3']);
});

rt('a frozen store: /readyz and status say since when; API and plugin calls are refused at once with one message; ready again after', async (t) => {
  etcd!.pause();
  try {
    const body = await waitFor('readyz 503 on h1', async () => {
      const r = await readyz(0);
      return /503$/.test(r) ? r : undefined;
    }, 60_000, 200);
    t.regex(body, /^not ready: cluster store etcd:\/\/198\.18\.255\.254:\d+\/kvnet\w+ is unreachable since \S+Z \(\d+ s\): .+\s503$/s);
    const status = JSON.parse((await kvnet(0, 'status')).stdout) as { ready: boolean; notReady: string; store: { state: string; since: string; lastError: string } };
    t.false(status.ready);
    t.is(status.store.state, 'unavailable');
    t.regex(status.store.since, /Z$/);
    t.truthy(status.store.lastError);

    const t0 = performance.now();
    const api = await unixRequest({ socketPath: sockets[0]!, method: 'POST', path: '/v1/networks', body: { name: 'frozen' }, timeoutMs: 30_000 });
    const apiMs = performance.now() - t0;
    const t1 = performance.now();
    const plugin = await unixRequest({ socketPath: join(dir, 'h1-plugin.sock'), method: 'POST', path: '/IpamDriver.RequestPool', body: { AddressSpace: 'kvnet', Pool: '', Options: {} }, timeoutMs: 30_000 });
    const pluginMs = performance.now() - t1;
    t.log(`while the store is known down: API create answered in ${apiMs.toFixed(1)} ms, plugin RequestPool in ${pluginMs.toFixed(1)} ms`);
    t.is(api.status, 503);
    const apiError = (api.body as { error: string; code: string });
    t.is(apiError.code, 'KVNET_STORE_UNAVAILABLE');
    t.regex(apiError.error, /^cluster store etcd:\/\/\S+ is unavailable: unreachable since \S+Z \(\d+ s\); last error: /, 'refused by the guard, not after the store timeout');
    const pluginError = (plugin.body as { Error?: string }).Error ?? '';
    t.is(pluginError.replace(/\(\d+ s\)/, '(N s)'), apiError.error.replace(/\(\d+ s\)/, '(N s)'), 'the Docker plugin gives the same message');
  } finally {
    etcd!.resume();
  }
  await waitFor('readyz ok again', async () => /^ready\s+200$/.test(await readyz(0)) && /^ready\s+200$/.test(await readyz(1)), 60_000, 200);
  const status = JSON.parse((await kvnet(0, 'status')).stdout) as { ready: boolean; store: { state: string } };
  t.true(status.ready);
  t.is(status.store.state, 'reachable');
  const create = await kvnet(0, 'network', 'create', 'after-freeze');
  t.is(create.code, 0, create.stderr);
});
