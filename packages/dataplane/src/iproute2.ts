/**
 * Running iproute2 (and the few other tools the data plane needs) in a given network namespace.
 *
 * Checked on iproute2 6.1 / kernel 6.18:
 * - `ip -n NAME` / `bridge -n NAME` accept only a name under /run/netns (an absolute path is appended to
 *   /run/netns/ and fails); a netns *path* (Docker's /var/run/docker/netns/<id>) is entered with
 *   `nsenter --net=PATH`. `link … netns PATH` does accept a path (anything containing a "/").
 * - `-batch -` with `-force` runs every line; each failing line prints its reason followed by
 *   `Command failed -:N` on stderr and the exit code is 1. A line iproute2 cannot *parse* (bad name,
 *   bad address) exits the whole process with 255 instead — the planner never emits such a line.
 * - `-json` with `-batch` prints one JSON array per command.
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { netnsLabel } from './config.ts';
import type { NetnsTarget } from './dataplane.ts';
import { CommandFailedError } from './errors.ts';

/** Every spawned command is killed after this long. */
export const COMMAND_TIMEOUT_MS = 20_000;
const STDERR_LIMIT_BYTES = 1 << 20;

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Set when the process could not be started or was killed (timeout, abort). */
  readonly failure?: string;
}

export interface CommandOptions {
  readonly input?: string;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /**
   * Send stdout to an unlinked scratch file instead of a pipe. For large outputs (10 000 neighbour or FDB
   * entries, ~1 MB) this is ~2.5× faster here: through a 64 KiB pipe the tool stalls on every chunk
   * until node has read it.
   */
  readonly largeOutput?: boolean;
}

let scratchDir: string | undefined;
let scratchSeq = 0;

/** A scratch file already unlinked (nothing is left behind even on a crash); tmpfs when there is one. */
async function openScratchFile(): Promise<FileHandle> {
  scratchDir ??= existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const path = join(scratchDir, `kvnet-dataplane-${process.pid}-${scratchSeq++}`);
  const file = await open(path, 'wx+', 0o600);
  await unlink(path);
  return file;
}

async function readWhole(file: FileHandle): Promise<string> {
  const { size } = await file.stat();
  const buffer = Buffer.allocUnsafe(size);
  let offset = 0;
  while (offset < size) {
    const { bytesRead } = await file.read(buffer, offset, size - offset, offset);
    if (bytesRead === 0) break;
    offset += bytesRead;
  }
  return buffer.toString('utf8', 0, offset);
}

/** Runs a command to completion with a timeout; never rejects except on abort. */
export async function runCommand(command: string, args: readonly string[], options: CommandOptions = {}): Promise<CommandResult> {
  options.signal?.throwIfAborted();
  const file = options.largeOutput ? await openScratchFile() : undefined;
  try {
    const result = await spawnAndWait(command, args, options, file?.fd);
    return file ? { ...result, stdout: await readWhole(file) } : result;
  } finally {
    await file?.close();
  }
}

function spawnAndWait(command: string, args: readonly string[], options: CommandOptions, stdoutFd: number | undefined): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', stdoutFd ?? 'pipe', 'pipe'] });
    // stdin and stderr are pipes (asked for above); stdout is one unless it goes to a file.
    const stdin = child.stdin!;
    const stderr = child.stderr!;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let errBytes = 0;
    let failure: string | undefined;
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    stderr.on('data', (d: Buffer) => {
      if (errBytes < STDERR_LIMIT_BYTES) err.push(d);
      errBytes += d.length;
    });
    const timer = setTimeout(() => {
      failure = `timed out after ${timeoutMs} ms`;
      child.kill('SIGKILL');
    }, timeoutMs);
    const onAbort = (): void => {
      failure = 'aborted';
      child.kill('SIGKILL');
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => {
      failure = `cannot run ${command}: ${e.message}`;
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (options.signal?.aborted) return reject(options.signal.reason);
      resolve({
        code: code ?? -1,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        ...(failure ? { failure } : {}),
      });
    });
    stdin.on('error', () => {
      // The process exited before reading all input; its exit status tells what happened.
    });
    stdin.end(options.input ?? '');
  });
}

/** argv that runs `tool args…` inside `netns`. */
export function commandIn(netns: NetnsTarget, tool: string, args: readonly string[]): [string, string[]] {
  switch (netns.kind) {
    case 'self':
      return [tool, [...args]];
    case 'name':
      if (tool === 'ip' || tool === 'bridge') return [tool, ['-n', netns.name, ...args]];
      return ['nsenter', [`--net=/run/netns/${netns.name}`, tool, ...args]];
    case 'path':
      return ['nsenter', [`--net=${netns.path}`, tool, ...args]];
  }
}

/** The command line as text, for error messages. */
export function showCommand([command, args]: [string, string[]]): string {
  return [command, ...args].join(' ');
}

export interface BatchResult {
  /** 1-based line number → iproute2's reason, for every line that failed. */
  readonly failures: ReadonlyMap<number, string>;
  /** Set when the batch as a whole failed (could not run, timed out, parse error): no line is known good. */
  readonly fatal?: string;
}

/** Runs `lines` as one `-force -batch -` of `tool` in `netns`. */
export async function runBatch(
  tool: 'ip' | 'bridge',
  netns: NetnsTarget,
  lines: readonly string[],
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<BatchResult> {
  const cmd = commandIn(netns, tool, ['-force', '-batch', '-']);
  const r = await runCommand(cmd[0], cmd[1], { ...options, input: lines.join('\n') + '\n' });
  if (r.failure) return { failures: new Map(), fatal: r.failure };
  const failures = parseBatchErrors(r.stderr);
  if (r.code === 0) return { failures };
  if (r.code === 1 && failures.size > 0) return { failures };
  return { failures, fatal: `${showCommand(cmd)} exited ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' / ') || 'no message'}` };
}

const FAILED_LINE = /^Command failed -:(\d+)$/;

/** Maps `Command failed -:N` markers in batch stderr to the message lines printed before each. */
export function parseBatchErrors(stderr: string): Map<number, string> {
  const failures = new Map<number, string>();
  let pending: string[] = [];
  for (const raw of stderr.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const m = FAILED_LINE.exec(line);
    if (m) {
      failures.set(Number(m[1]), cleanReason(pending.join(' ')));
      pending = [];
    } else pending.push(line);
  }
  return failures;
}

function cleanReason(text: string): string {
  return text.replace(/^RTNETLINK answers: /, '').replace(/^Error: /, '').trim() || 'unknown error';
}

/**
 * Runs `lines` as one `-json -batch -` read and returns one parsed JSON value per line. Rejects if
 * any line fails (CommandFailedError), so callers use only reads that cannot fail (no `dev X` filters).
 */
export async function readJsonBatch(
  tool: 'ip' | 'bridge',
  netns: NetnsTarget,
  args: readonly string[],
  lines: readonly string[],
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<unknown[]> {
  const cmd = commandIn(netns, tool, [...args, '-json', '-batch', '-']);
  const r = await runCommand(cmd[0], cmd[1], { ...options, input: lines.join('\n') + '\n', largeOutput: true });
  if (r.failure || r.code !== 0) throw readFailure(netns, cmd, r);
  return parseJsonLines(r.stdout);
}

/** Runs one `-json` read; rejects with CommandFailedError. */
export async function readJson(
  tool: 'ip' | 'bridge',
  netns: NetnsTarget,
  args: readonly string[],
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<unknown> {
  const cmd = commandIn(netns, tool, ['-json', ...args]);
  const r = await runCommand(cmd[0], cmd[1], { ...options, largeOutput: true });
  if (r.failure || r.code !== 0) throw readFailure(netns, cmd, r);
  return r.stdout.trim() ? JSON.parse(r.stdout) : [];
}

function readFailure(netns: NetnsTarget, cmd: [string, string[]], r: CommandResult): CommandFailedError {
  return new CommandFailedError({ kind: 'netns', netns: netnsLabel(netns) }, showCommand(cmd), r.failure ?? `exited ${r.code}: ${r.stderr.trim() || 'no message'}`);
}

/**
 * Parses the output of a `-json -batch`: iproute2 prints each command's JSON array on one line (strings
 * are escaped, so a value never spans lines), one line per command.
 */
export function parseJsonLines(text: string): unknown[] {
  return text.split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line) as unknown);
}
