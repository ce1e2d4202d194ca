/**
 * A per-run "build" dockerd for the deployment tests (Docker 28.5.2 unless `engine` says otherwise,
 * docker-engines.ts): in the root network namespace, so `docker build
 * --network host` reaches Debian's mirror and the npm registry, and in a private mount namespace with its
 * own data and exec roots; it creates no bridge and no iptables rules. `stop()` stops it and kills what a
 * killed build leaves (containerd, the shims of a build step), found by its exec root, which is unique
 * to the run; the same sweep runs at process exit. Plus two helpers for long steps.
 */

import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, startProcess, waitFor, type ManagedProcess, type RunResult } from './process.ts';
import { dockerEngine, engineMissing, enginePath, type DockerEngine, type DockerEngineName } from './docker-engines.ts';

const READY_TIMEOUT_MS = 90_000;
const COMMAND_TIMEOUT_MS = 900_000;
const STOP_GRACE_MS = 20_000;

export interface BuildDaemon {
  readonly proc: ManagedProcess;
  readonly socket: string;
  /** The engine it runs; `engine.cli` is the CLI that fits it. */
  readonly engine: DockerEngine;
  /** The engine's docker CLI against it; resolves whatever the exit code. */
  docker(...args: string[]): Promise<RunResult>;
  stop(): Promise<void>;
}

/** SIGKILLs every process whose command line names `execRoot`. Synchronous, for an 'exit' listener. */
function killLeftovers(execRoot: string): void {
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').includes(execRoot)) process.kill(pid, 'SIGKILL');
    } catch {
      // gone, or not ours to read
    }
  }
}

/** Starts the build daemon under `dir/builder`; resolves once it answers. */
export async function startBuildDaemon(dir: string, name: string, engineName?: DockerEngineName): Promise<BuildDaemon> {
  const engine = dockerEngine(engineName);
  const missing = engineMissing(engine);
  if (missing) throw new Error(`cannot start the build dockerd: ${missing}`);
  const b = join(dir, 'builder');
  const execRoot = join(b, 'exec');
  for (const p of ['data', 'exec']) mkdirSync(join(b, p), { recursive: true });
  const socket = join(b, 'docker.sock');
  const proc = startProcess(name, 'unshare', ['--mount', '--propagation', 'private', engine.dockerd,
    '--data-root', join(b, 'data'), '--exec-root', execRoot, '-H', `unix://${socket}`, '-p', join(b, 'docker.pid'),
    '--bridge', 'none', '--iptables=false', '--ip-masq=false', '--log-level', 'warn'], { logFile: join(dir, 'builder.log'), env: { ...process.env, PATH: enginePath(engine) } });
  // before process.ts's own exit hook, which SIGKILLs dockerd and deletes the temp dir
  process.prependListener('exit', () => killLeftovers(execRoot));
  const docker = (...args: string[]): Promise<RunResult> => run(engine.cli, ['-H', `unix://${socket}`, ...args], { allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
  let stopped = false;
  const daemon: BuildDaemon = {
    proc,
    socket,
    engine,
    docker,
    async stop() {
      if (stopped) return;
      stopped = true;
      await proc.stop(STOP_GRACE_MS).catch(() => undefined);
      killLeftovers(execRoot);
    },
  };
  try {
    await waitFor('build dockerd', async () => {
      if (proc.child.exitCode !== null) throw new Error(proc.log().slice(-2000));
      return existsSync(socket) && (await docker('version', '--format', '{{.Server.Version}}')).code === 0;
    }, READY_TIMEOUT_MS, 200);
  } catch (err) {
    await daemon.stop();
    throw err;
  }
  return daemon;
}

/**
 * Prints progress every 30 s during a long step. ava's inactivity timeout is not reset by worker output
 * (only by test events): long hooks and tests raise their own limit with `t.timeout()`.
 */
export async function heartbeat<T>(label: string, what: string, p: Promise<T>): Promise<T> {
  const started = Date.now();
  const timer = setInterval(() => console.error(`[${label}] ${what}: ${Math.round((Date.now() - started) / 1000)} s`), 30_000);
  try {
    return await p;
  } finally {
    clearInterval(timer);
  }
}

/** The command's stdout, or an error with its exit code and the end of its output. */
export async function ok(r: Promise<RunResult>, what: string): Promise<string> {
  const res = await r;
  if (res.code !== 0) throw new Error(`${what} exited ${res.code}: ${(res.stdout.trim() + '\n' + res.stderr.trim()).trim().slice(-4000)}`);
  return res.stdout.trim();
}
