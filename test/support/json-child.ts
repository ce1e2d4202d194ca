/**
 * A helper process that reports on stdout one JSON object per line and may read commands from stdin —
 * how the store and IPAM suites run a second (or eighth) client in another process against the same
 * real server. Killed at this process's exit, so a failed test leaves no child behind.
 *
 * ```ts
 * const c = spawnJsonChild(CLIENT, [url, 'allocate', poolId]);
 * await c.next((l) => l.ready);   // the first line that matches (seen before, or still to come)
 * c.send('go');
 * const { code, lines } = await c.done;
 * ```
 */

import { spawn } from 'node:child_process';

export interface JsonChildResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Every line, parsed. */
  readonly lines: unknown[];
  readonly stderr: string;
}

export interface JsonChild {
  readonly pid: number;
  /** The lines seen so far, parsed. */
  readonly lines: unknown[];
  /** The first line (seen or still to come) for which `pred` holds; rejects when the process exits first. */
  next(pred: (line: any) => boolean): Promise<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** Resolves when the process has exited and its output is read. */
  readonly done: Promise<JsonChildResult>;
  /** Writes one line to its stdin. */
  send(line: string): void;
  kill(): void;
}

/** Runs `script` (TypeScript, through tsx) with `args`. */
export function spawnJsonChild(script: string, args: readonly string[]): JsonChild {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const killOnExit = (): void => void child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const lines: unknown[] = [];
  const waiters: Array<{ pred: (l: any) => boolean; resolve: (l: unknown) => void; reject: (e: unknown) => void }> = []; // eslint-disable-line @typescript-eslint/no-explicit-any
  let stderr = '';
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = JSON.parse(buf.slice(0, nl)) as unknown;
      buf = buf.slice(nl + 1);
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.pred(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.on('error', () => undefined);
  const done = new Promise<JsonChildResult>((resolve) =>
    child.on('close', (code, signal) => {
      process.removeListener('exit', killOnExit);
      for (const w of waiters.splice(0)) w.reject(new Error(`${script} exited (${code ?? signal}): ${stderr.slice(-2000)}`));
      resolve({ code, signal, lines, stderr });
    }),
  );
  return {
    pid: child.pid!,
    lines,
    next: (pred) => {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      if (child.exitCode !== null || child.signalCode !== null) return Promise.reject(new Error(`${script} already exited: ${stderr.slice(-2000)}`));
      return new Promise((resolve, reject) => waiters.push({ pred, resolve, reject }));
    },
    done,
    send: (line) => child.stdin.write(line + '\n'),
    kill: () => void child.kill('SIGKILL'),
  };
}
