/**
 * Child processes for tests and benchmarks: spawned with a name, logged to a file, and always
 * killed when the test process ends (also when an assertion fails or the runner is interrupted).
 */

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const live = new Set<ManagedProcess>();
const tempDirs = new Set<string>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  const killAll = (): void => {
    for (const p of live) {
      try {
        if (p.child.pid) process.kill(p.child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAll();
      process.exit(130);
    });
  }
}

/** A short id unique to this test process, safe inside interface names (lowercase letters/digits). */
export function runId(): string {
  return (process.pid % 46656).toString(36).padStart(3, '0') + randomBytes(2).toString('hex').slice(0, 2);
}

/** A temporary directory removed when the process exits (or by `removeTempDir`). */
export function makeTempDir(label: string): string {
  installExitHooks();
  const dir = mkdtempSync(join(tmpdir(), `kvnet-${label}-`));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/** Ports this process has handed out: the kernel may offer a port again once its probe closed it. */
const handedOut = new Set<number>();

/**
 * A port that was free a moment ago on `host` for both TCP and UDP (Consul's serf ports take both),
 * and never one this process handed out before: two calls in a row can otherwise get the same port
 * (a Consul once refused to start because its serf and server ports were one).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await bindTcp(host, 0);
    if (handedOut.has(port) || !(await udpFree(host, port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port on ${host} after 100 tries`);
}

function bindTcp(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(port, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function udpFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    sock.unref();
    sock.once('error', () => resolve(false));
    sock.bind(port, host, () => sock.close(() => resolve(true)));
  });
}

/** Resolves once something accepts TCP connections on host:port; rejects after `timeoutMs`. */
export async function waitForPort(host: string, port: number, timeoutMs: number, netns?: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = netns ? await probeInNetns(netns, host, port) : await probe(host, port);
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function probe(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    sock.setTimeout(500);
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
    sock.once('timeout', () => {
      sock.destroy();
      resolve(false);
    });
  });
}

async function probeInNetns(netns: string, host: string, port: number): Promise<boolean> {
  const r = await run('nsenter', [`--net=/run/netns/${netns}`, 'bash', '-c', `exec 3<>/dev/tcp/${host}/${port}`], {
    allowFailure: true,
  });
  return r.code === 0;
}

export interface ManagedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL; resolves when the process is gone. */
  kill(): Promise<void>;
  signal(sig: NodeJS.Signals): void;
  /** The log so far (stdout and stderr interleaved). */
  log(): string;
}

export interface StartOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Where stdout/stderr go; a temp file by default. */
  readonly logFile?: string;
  /** Run inside this network namespace (name under /run/netns) via nsenter. */
  readonly netns?: string;
  /** Pipe stdout to the caller instead of the log (stderr still goes to the log). */
  readonly pipeStdout?: boolean;
}

/** Starts a long-running process that is killed when the test process exits. */
export function startProcess(name: string, command: string, args: string[], options: StartOptions = {}): ManagedProcess {
  installExitHooks();
  const logFile = options.logFile ?? join(makeTempDir(`log-${name}`), `${name}.log`);
  const out = createWriteStream(logFile, { flags: 'a' });
  const [cmd, argv] = options.netns
    ? ['nsenter', [`--net=/run/netns/${options.netns}`, command, ...args]]
    : [command, args];
  const spawnOptions: SpawnOptions = {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: ['ignore', options.pipeStdout ? 'pipe' : 'pipe', 'pipe'],
  };
  const child = spawn(cmd, argv, spawnOptions);
  if (!options.pipeStdout) child.stdout?.pipe(out, { end: false });
  child.stderr?.pipe(out, { end: false });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, sig) => {
      live.delete(managed);
      resolve(code ?? sig ?? 'unknown');
    });
    child.once('error', (err) => {
      out.write(`spawn error: ${err.message}\n`);
      live.delete(managed);
      resolve('spawn-error');
    });
  });
  const gone = (): boolean => child.exitCode !== null || child.signalCode !== null;
  const managed: ManagedProcess = {
    name,
    child,
    logFile,
    exited,
    async stop(graceMs = 5000) {
      if (gone()) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (gone()) return;
      child.kill('SIGKILL');
      await exited;
    },
    signal(sig) {
      if (!gone()) child.kill(sig);
    },
    log() {
      return existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    },
  };
  live.add(managed);
  return managed;
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a command to completion (SIGKILLed after `timeoutMs`, if given). Rejects on a non-zero exit
 * unless `allowFailure`. Its stdin is `input`, or closed.
 */
export function run(
  command: string,
  args: string[],
  options: { allowFailure?: boolean; input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; netns?: string; cwd?: string } = {},
): Promise<RunResult> {
  const [cmd, argv] = options.netns ? ['nsenter', [`--net=/run/netns/${options.netns}`, command, ...args]] : [command, args];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, {
      env: options.env ?? process.env,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      ...(options.cwd ? { cwd: options.cwd } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = options.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), options.timeoutMs) : undefined;
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const result = { code: code ?? -1, stdout, stderr };
      if (code !== 0 && !options.allowFailure) {
        reject(new Error(`${cmd} ${argv.join(' ')} exited ${code ?? signal}: ${stderr.trim() || stdout.trim()}`));
      } else resolve(result);
    });
    if (child.stdin) {
      child.stdin.on('error', () => {}); // the child may exit before reading its input (EPIPE)
      child.stdin.end(options.input);
    }
  });
}

/** Polls `check` every `intervalMs` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs: number,
  intervalMs = 50,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The absolute path of the repository root. */
export const REPO_ROOT = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');

/** Arguments that run a TypeScript file with node + tsx. */
export function tsNodeArgs(file: string, ...args: string[]): string[] {
  return ['--import', 'tsx', file, ...args];
}
