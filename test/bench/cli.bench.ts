/**
 * `npm run bench -- cli [--json] [--reps N] [--no-docker]` (root).
 *
 * How long a client command takes, start to exit, as a person or a script runs it: one whole process
 * per sample, against a running agent. One simulated host (a network namespace on an underlay) runs a
 * real agent from the bundle (`npm run build`, rebuilt here) with {@link NETWORKS} networks, and a real
 * dockerd with as many bridge networks, whose `docker network ls` is the reference in the same run.
 *
 * Commands, sampled round-robin (one sample of each in turn, so load on a shared machine hits all
 * alike) after {@link WARMUP} warm-up rounds:
 * - `node -e 0`: Node's own start-up, the floor of any Node command;
 * - `kvnet network ls`, `kvnet node ls`, `kvnet endpoint ls` from the bundle (dist/kvnet.mjs, what a
 *   deployment runs);
 * - `kvnet network ls` from the TypeScript sources through tsx (packages/cli/bin/kvnet, the development
 *   path; tsx's loader alone is most of it);
 * - `docker network ls` (the Docker CLI on PATH against the dockerd).
 * p50/p90 are nearest-rank over `--reps` samples. Each command runs under GNU time (`/usr/bin/time`,
 * Debian package `time`) for its CPU time (user + system, 10 ms resolution): on a loaded machine wall
 * time is mostly waiting for a core, CPU time is what the command itself costs. With --json: one object
 * per command on stdout (keys per ../shared/docs/benchmarks.md: `command`, `wall_p50_ms`,
 * `wall_p90_ms`; also `cpu_p50_ms`), progress on stderr.
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startDockerd, canRunDockerd, type Dockerd } from '../support/dockerd.ts';
import { makeTempDir, removeTempDir, REPO_ROOT, run, runId, startProcess, waitFor, type ManagedProcess } from '../support/process.ts';
import { createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';

const DEFAULT_REPS = 30;
const WARMUP = 3;
/** Networks on each side (kvnet and dockerd), so `ls` has rows to print. */
const NETWORKS = 5;
const AGENT_READY_MS = 90_000;
const SAMPLE_TIMEOUT_MS = 60_000;
const GNU_TIME = '/usr/bin/time';

interface Options {
  json: boolean;
  reps: number;
  docker: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, reps: DEFAULT_REPS, docker: true };
  const usage = 'usage: cli [--json] [--reps N] [--no-docker]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--no-docker') o.docker = false;
    else if (a === '--reps') o.reps = Number(argv[++i]);
    else if (a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; ${usage}`);
  }
  if (!Number.isInteger(o.reps) || o.reps < 1) throw new Error('--reps must be a positive integer');
  return o;
}

interface Command {
  readonly name: string;
  readonly runtime: string;
  readonly argv: readonly string[];
  readonly samples: number[];
  readonly cpu: number[];
}

/**
 * Runs one command to its exit under GNU time; resolves with the wall time (from spawning GNU time to
 * its exit) and the command's CPU time, in ms. Rejects on a non-zero exit.
 */
function sample(argv: readonly string[]): Promise<{ wallMs: number; cpuMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(GNU_TIME, ['-f', 'KVNETCPU %U %S', ...argv], { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO_ROOT });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), SAMPLE_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const wallMs = performance.now() - t0;
      const m = /KVNETCPU (\d+\.\d+) (\d+\.\d+)\s*$/.exec(err);
      if (code === 0 && m) resolve({ wallMs, cpuMs: (Number(m[1]) + Number(m[2])) * 1000 });
      else reject(new Error(`${argv.join(' ')} exited ${code}: ${err.trim()}`));
    });
  });
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

const round = (n: number): number => Math.round(n * 10) / 10;

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('the cli benchmark needs root (a simulated host, dockerd)');
  if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} is missing (Debian package time)`);
  if (options.docker && !(await canRunDockerd())) throw new Error('dockerd, docker, containerd, runc and a static busybox are needed for the Docker reference (or pass --no-docker)');
  const progress = (m: string): void => void process.stderr.write(`[cli] ${m}\n`);
  const id = runId();
  const dir = makeTempDir(`bench-cli-${id}`);
  let sim: SimNetwork | undefined;
  let agent: ManagedProcess | undefined;
  let dockerd: Dockerd | undefined;
  try {
    progress('building the bundle (npm run build)');
    await run(process.execPath, [join(REPO_ROOT, 'scripts', 'build.mjs')], { cwd: REPO_ROOT });
    const bundle = join(REPO_ROOT, 'dist', 'kvnet.mjs');
    sim = await createSimNetwork({ hosts: 1, prefix: id });
    const host = sim.hosts[0]!;
    const socket = join(dir, 'kvnet.sock');
    agent = startProcess(`agent-${id}`, process.execPath, [
      '--max-semi-space-size=1', bundle, 'agent', '--cluster-store', `local://${join(dir, 'store.db')}`, '--cluster-advertise', host.address,
      '--node-name', 'h1', '--socket', socket, '--state-dir', join(dir, 'state'), '--name-prefix', `${id}1`, '--gateway-bridge', 'none', '--metrics-addr', 'off',
    ], { netns: host.name, cwd: REPO_ROOT, logFile: join(dir, 'agent.log') });
    await waitFor('the agent ready', () => {
      if (agent!.child.exitCode !== null) throw new Error(agent!.log());
      return agent!.log().includes('"msg":"agent ready"');
    }, AGENT_READY_MS, 100);
    const kvnet = (...args: string[]): string[] => [process.execPath, bundle, '--socket', socket, ...args];
    for (let i = 0; i < NETWORKS; i++) await sample(kvnet('network', 'create', '--subnet', `10.${60 + i}.0.0/24`, `bench${i}`));

    const commands: Command[] = [
      { name: 'node -e 0', runtime: 'node', argv: [process.execPath, '-e', '0'], samples: [], cpu: [] },
      { name: 'kvnet network ls', runtime: 'bundle', argv: kvnet('network', 'ls'), samples: [], cpu: [] },
      { name: 'kvnet node ls', runtime: 'bundle', argv: kvnet('node', 'ls'), samples: [], cpu: [] },
      { name: 'kvnet endpoint ls', runtime: 'bundle', argv: kvnet('endpoint', 'ls'), samples: [], cpu: [] },
      { name: 'kvnet network ls', runtime: 'tsx', argv: [join(REPO_ROOT, 'packages/cli/bin/kvnet'), '--socket', socket, 'network', 'ls'], samples: [], cpu: [] },
    ];
    if (options.docker) {
      progress('starting dockerd on the simulated host (the reference)');
      dockerd = await startDockerd({ host, runId: id });
      for (let i = 0; i < NETWORKS; i++) await dockerd.dockerOk('network', 'create', '--subnet', `10.${70 + i}.0.0/24`, `bench${i}`);
      const version = (await dockerd.dockerOk('version', '--format', '{{.Client.Version}} / {{.Server.Version}}')).trim();
      commands.push({ name: 'docker network ls', runtime: `docker ${version}`, argv: ['docker', '-H', `unix://${dockerd.socket}`, 'network', 'ls'], samples: [], cpu: [] });
    }

    progress(`${WARMUP} warm-up rounds, then ${options.reps} samples of each command, round-robin`);
    for (let r = 0; r < WARMUP + options.reps; r++) {
      for (const c of commands) {
        const { wallMs, cpuMs } = await sample(c.argv);
        if (r >= WARMUP) {
          c.samples.push(wallMs);
          c.cpu.push(cpuMs);
        }
      }
    }
    const results = commands.map((c) => ({
      suite: 'cli',
      command: c.name,
      runtime: c.runtime,
      samples: c.samples.length,
      wall_p50_ms: round(percentile(c.samples, 50)),
      wall_p90_ms: round(percentile(c.samples, 90)),
      cpu_p50_ms: round(percentile(c.cpu, 50)),
    }));
    if (options.json) {
      for (const r of results) process.stdout.write(`${JSON.stringify(r)}\n`);
    } else {
      const rows = results.map((r) => [r.command, r.runtime, String(r.wall_p50_ms), String(r.wall_p90_ms), String(r.cpu_p50_ms)]);
      const head = ['command', 'runtime', 'wall p50 ms', 'wall p90 ms', 'cpu p50 ms'];
      const w = head.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i]!.length)));
      const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(w[i]!)).join(' | ')} |`;
      process.stdout.write([line(head), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...rows.map(line)].join('\n') + '\n');
      process.stdout.write(`(${options.reps} samples each after ${WARMUP} warm-up rounds; load average ${(await run('cat', ['/proc/loadavg'])).stdout.split(' ').slice(0, 3).join(' ')})\n`);
    }
  } finally {
    await dockerd?.stop().catch(() => undefined);
    await agent?.stop(10_000).catch(() => undefined);
    await sim?.destroy();
    removeTempDir(dir);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`cli benchmark failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
