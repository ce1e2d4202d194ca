/**
 * `kvnet agent` start-up as an operator meets it, with real processes: a store nobody listens on is
 * named with what a connection to it does (not only "no answer within 5000 ms"), and a second agent on
 * the same state dir refuses, naming the first one's pid, while the first keeps running and registered.
 * Needs root: the agents run in one simulated host (its underlay interface decides the overlay's MTU);
 * nothing is plumbed.
 */

import test from 'ava';
import { join } from 'node:path';
import { freePort, makeTempDir, removeTempDir, run, runId, startProcess, waitFor, REPO_ROOT } from '../../../test/support/process.ts';
import { createSimNetwork, type SimNetwork } from '../../../test/support/sim-hosts.ts';

const MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');
const isRoot = process.getuid?.() === 0;
const rt = isRoot ? test.serial : test.skip;

let sim: SimNetwork | undefined;
test.before(async () => {
  if (isRoot) sim = await createSimNetwork({ hosts: 1, prefix: runId() });
});
test.after.always(async () => {
  await sim?.destroy();
});
/** The simulated host the agents run in (`netns` for run/startProcess). */
const host = (): { netns: string } => ({ netns: sim!.hosts[0]!.name });

function agentArgs(dir: string, store: string, extra: string[] = []): string[] {
  return [
    '--import', 'tsx', MAIN, '--socket', join(dir, 'kvnet.sock'), 'agent', '--cluster-store', store, '--cluster-advertise', 'eth0',
    '--node-name', 'solo', '--state-dir', join(dir, 'state'), '--metrics-addr', 'off', '--name-prefix', runId().slice(0, 6), '--gateway-bridge', 'none', ...extra,
  ];
}

for (const [backend, scheme] of [['ZooKeeper', 'zk'], ['etcd', 'etcd']] as const) {
  rt(`a ${backend} nobody listens on: the error says so (connection refused), exit 1`, async (t) => {
    const dir = makeTempDir('agent-start');
    try {
      const port = await freePort();
      const r = await run(process.execPath, agentArgs(dir, `${scheme}://127.0.0.1:${port}/kvnet`, ['--cluster-store-opt', 'kv.timeout=1s']), { allowFailure: true, cwd: REPO_ROOT, timeoutMs: 60_000, ...host() });
      t.is(r.code, 1);
      t.regex(r.stderr, new RegExp(`^kvnet: cluster store ${scheme}://127\\.0\\.0\\.1:${port}/kvnet is unavailable: .+ \\[127\\.0\\.0\\.1:${port}: connection refused\\]\\n$`));
    } finally {
      removeTempDir(dir);
    }
  });
}

rt('a second agent on the same state dir refuses, naming the running one; the first stays registered', async (t) => {
  const dir = makeTempDir('agent-lock');
  const store = `local://${join(dir, 'store.db')}`;
  const first = startProcess('agent-first', process.execPath, agentArgs(dir, store), { cwd: REPO_ROOT, ...host() });
  try {
    await waitFor('the first agent ready', () => {
      if (first.child.exitCode !== null) throw new Error(first.log());
      return first.log().includes('"msg":"agent ready"');
    }, 60_000, 100);
    const second = await run(process.execPath, agentArgs(join(dir, 'other-socket'), store, ['--state-dir', join(dir, 'state')]), { allowFailure: true, cwd: REPO_ROOT, timeoutMs: 60_000, ...host() });
    t.is(second.code, 1);
    t.is(second.stderr, `kvnet: state dir ${join(dir, 'state')} is in use by another kvnet agent (pid ${first.child.pid}, node solo, started ${/"startedAt":"([^"]+)"/.exec((await run('cat', [join(dir, 'state', 'agent.lock')])).stdout)![1]}); stop that agent first, or give this one its own --state-dir\n`);
    const nodes = await run(process.execPath, ['--import', 'tsx', MAIN, '--socket', join(dir, 'kvnet.sock'), 'node', 'ls', '--format', '{{.Name}} {{.State}}'], { cwd: REPO_ROOT });
    t.is(nodes.stdout, 'solo alive\n', 'the first agent is still registered');
    const status = JSON.parse((await run(process.execPath, ['--import', 'tsx', MAIN, '--socket', join(dir, 'kvnet.sock'), 'status'], { cwd: REPO_ROOT })).stdout) as { ready: boolean; pid: number };
    t.true(status.ready);
    t.is(status.pid, first.child.pid!);
  } finally {
    await first.stop(10_000);
    removeTempDir(dir);
  }
});
