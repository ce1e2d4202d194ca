/**
 * deploy/kvnet.service, as far as it can be proven without booting systemd:
 * - its readiness handshake: the unit's own ExecStart and ExecStartPost lines (with /opt/kvnet being
 *   this checkout, the environment kvnet.env would give, and the agent in a simulated host) — the
 *   ExecStartPost `kvnet status --wait` ends only once the agent runs and its Docker plugin socket
 *   answers Plugin.Activate, which is what `Before=docker.service` then waits for;
 * - the build command its header documents, run on a fresh clone of this commit (`npm ci` from the
 *   registry, the bundle, `npm prune --omit=dev`), after which the bundle and every chunk of it load.
 * Needs root (a network namespace), systemd-analyze, git, and the npm registry for the clone's `npm ci`.
 */

import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { socketAnswers, unixRequest } from '../../packages/agent/src/unix-http.ts';
import { makeTempDir, removeTempDir, REPO_ROOT, run, runId, startProcess, waitFor } from '../support/process.ts';
import { createSimNetwork } from '../support/sim-hosts.ts';

const UNIT = join(REPO_ROOT, 'deploy/kvnet.service');
const isRoot = process.getuid?.() === 0;
/** npm ci (better-sqlite3 compiles from source when no prebuilt binary is reachable), build, prune. */
const BUILD_TIMEOUT_MS = 20 * 60_000;

/** `Key=value` lines of the unit's [Service] section (repeated keys in order). */
function serviceLines(key: string): string[] {
  const text = readFileSync(UNIT, 'utf8');
  const service = text.slice(text.indexOf('[Service]'), text.indexOf('[Install]'));
  return service.split('\n').filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
}

/** A unit command line with /opt/kvnet replaced by `root` and `$VARS` expanded as systemd splits them. */
function command(line: string, root: string, env: Record<string, string>): string[] {
  return line
    .replaceAll('/opt/kvnet', root)
    .split(/\s+/)
    .flatMap((w) => (w.startsWith('$') ? (env[w.slice(1)] ?? '').split(/\s+/).filter(Boolean) : [w]));
}

test('the unit passes systemd-analyze verify, is ordered before docker.service and waits for the agent in ExecStartPost', async (t) => {
  const which = await run('sh', ['-c', 'command -v systemd-analyze'], { allowFailure: true });
  if (which.code !== 0) return t.fail('systemd-analyze is not installed (Debian package systemd)');
  const r = await run('systemd-analyze', ['verify', UNIT], { allowFailure: true });
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr.trim(), '', 'no warnings');
  const text = readFileSync(UNIT, 'utf8');
  t.regex(text, /^Before=docker\.service$/m);
  t.deepEqual(serviceLines('ExecStartPost').map((l) => l.replace(/^\S+ \S+ /, '')), ['status --wait 110s']);
  t.deepEqual(serviceLines('TimeoutStartSec'), ['120']);
});

(isRoot ? test : test.skip)("ExecStartPost returns only once the agent runs and its plugin socket answers", async (t) => {
  t.timeout(3 * 60_000);
  const id = runId();
  const dir = makeTempDir(`unit-${id}`);
  const sim = await createSimNetwork({ hosts: 1, prefix: id });
  try {
    await run(process.execPath, [join(REPO_ROOT, 'scripts/build.mjs')], { cwd: REPO_ROOT });
    const host = sim.hosts[0]!;
    const plugin = join(dir, 'plugins', 'kvnet.sock');
    const env: Record<string, string> = {
      // what /etc/kvnet/kvnet.env and the unit's Environment= lines give the agent here
      KVNET_CLUSTER_STORE: `local://${join(dir, 'store.db')}`,
      KVNET_CLUSTER_ADVERTISE: 'eth0',
      KVNET_NODE_NAME: 'h1',
      KVNET_SOCKET: join(dir, 'kvnet.sock'),
      KVNET_AGENT_OPTS: `--docker-plugin=${plugin} --docker-socket=off --state-dir=${join(dir, 'state')} --name-prefix=${id}1 --gateway-bridge=none --metrics-addr=off`,
    };
    const [startCmd, ...startArgs] = command(serviceLines('ExecStart')[0]!, REPO_ROOT, env);
    const [postCmd, ...postArgs] = command(serviceLines('ExecStartPost')[0]!, REPO_ROOT, env);
    const childEnv = { ...process.env, ...env };
    // systemd runs ExecStartPost right after forking ExecStart (Type=simple)
    const agent = startProcess(`agent-${id}`, startCmd!, startArgs, { netns: host.name, env: childEnv, logFile: join(dir, 'agent.log') });
    const waited = await new Promise<{ code: number | null; pluginAnswered: boolean; agentReady: boolean; out: string }>((resolve) => {
      const post = spawn(postCmd!, postArgs, { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      post.stdout.on('data', (d: Buffer) => (out += d.toString()));
      post.stderr.on('data', (d: Buffer) => (out += d.toString()));
      post.on('close', (code) => {
        // what holds at the moment ExecStartPost ends, i.e. when systemd would start docker.service
        void socketAnswers(plugin).then((pluginAnswered) => resolve({ code, pluginAnswered, agentReady: agent.log().includes('"msg":"agent ready"'), out }));
      });
    });
    t.is(waited.code, 0, waited.out);
    t.true(waited.agentReady, 'the agent had logged "agent ready"');
    t.true(waited.pluginAnswered, 'the plugin socket answers');
    const activate = await unixRequest({ socketPath: plugin, method: 'POST', path: '/Plugin.Activate', body: {}, timeoutMs: 5_000 });
    t.deepEqual((activate.body as { Implements: string[] }).Implements.sort(), ['IpamDriver', 'NetworkDriver']);
    t.like(JSON.parse(waited.out), { node: 'h1', phase: 'running', dockerPlugin: plugin });
    await agent.stop(10_000);
    t.is(await agent.exited, 0);
  } finally {
    await sim.destroy();
    removeTempDir(dir);
  }
});

(isRoot ? test : test.skip)("the header's build command works on a fresh clone; the bundle and all its chunks load after the prune", async (t) => {
  t.timeout(BUILD_TIMEOUT_MS + 60_000);
  const header = readFileSync(UNIT, 'utf8').split('\n').find((l) => /^#\s+npm ci/.test(l));
  t.truthy(header, 'the unit documents its build command');
  const cmd = header!.replace(/^#\s+/, '').replace(/\s{2,}\(.*$/, '').trim();
  t.is(cmd, 'npm ci && npm run build && npm prune --omit=dev');
  const dir = makeTempDir('unit-clone');
  try {
    const clone = join(dir, 'kvnet');
    await run('git', ['clone', '-q', REPO_ROOT, clone]);
    const t0 = Date.now();
    const r = await run('sh', ['-c', `${cmd.replaceAll('npm ci', 'npm ci --no-audit --no-fund --loglevel=error').replaceAll('npm prune --omit=dev', 'npm prune --omit=dev --no-audit --no-fund --loglevel=error')}`], { cwd: clone, allowFailure: true, timeoutMs: BUILD_TIMEOUT_MS });
    t.log(`${cmd}: exit ${r.code} after ${Math.round((Date.now() - t0) / 1000)} s`);
    t.is(r.code, 0, r.stderr.slice(-3000));
    t.false(existsSync(join(clone, 'node_modules', 'esbuild')), 'dev dependencies are gone');
    const version = await run(process.execPath, [join(clone, 'dist/kvnet.mjs'), '--version'], { cwd: dir });
    const commit = (await run('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: clone })).stdout.trim();
    t.is(version.stdout, `kvnet version ${JSON.parse(readFileSync(join(clone, 'packages/agent/package.json'), 'utf8')).version}, build ${commit}\n`);
    const chunks = readdirSync(join(clone, 'dist/chunks')).filter((f) => f.endsWith('.mjs'));
    t.true(chunks.length > 0);
    const load = await run(process.execPath, ['--input-type=module', '-e', `for (const f of ${JSON.stringify(chunks)}) await import(${JSON.stringify(`${clone}/dist/chunks/`)} + f); console.log('loaded');`], { cwd: dir, allowFailure: true });
    t.is(load.stdout.trim(), 'loaded', load.stderr);
  } finally {
    removeTempDir(dir);
  }
});
