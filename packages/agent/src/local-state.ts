/**
 * What one agent keeps on its own disk (`<state dir>/agent-state.json`): its persistent node
 * identity, so a restarted agent takes over its previous incarnation's records instead of conflicting
 * with them, and the gateway bridge addresses it gave its local endpoints (host-local, so not in the
 * cluster store). Written atomically (temp file + rename).
 *
 * One agent per state dir: {@link StateDirLock} (`<state dir>/agent.lock`, created with O_EXCL,
 * holding the pid and that process's start time) is taken before the identity is read. A second
 * agent on the same dir refuses to start, naming the running one's pid — two agents sharing one node
 * identity would take over each other's node record and leave the host looking dead to the cluster.
 * A lock whose process is gone (crash, kill -9, power loss) is taken over. The pid is checked in this
 * process's PID namespace, together with its start time so a reused pid is not mistaken for the holder.
 */

import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { StateDirLockedError } from './errors.ts';

export const STATE_FILE = 'agent-state.json';
export const LOCK_FILE = 'agent.lock';
const STATE_VERSION = 1;
/** Tries of create → (stale: remove) → create again before giving up; only a race between starting agents needs more than two. */
const LOCK_ATTEMPTS = 3;

/** What the lock file holds. */
export interface LockHolder {
  readonly pid: number;
  /** The holder's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22), against pid reuse. */
  readonly startTicks?: string;
  readonly startedAt: string;
  /** `--node-name` of the holder. */
  readonly node?: string;
}

/** Start time of `pid` in clock ticks since boot, or undefined when no such process exists here. */
export function processStartTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) is in parentheses and may contain spaces: count fields after it
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}

/** Whether the process a lock file names still runs (same pid and, when recorded, the same start time). */
export function holderAlive(holder: LockHolder): boolean {
  if (!Number.isInteger(holder.pid) || holder.pid <= 0) return false;
  const ticks = processStartTicks(holder.pid);
  if (ticks === undefined) return false;
  return holder.startTicks === undefined || holder.startTicks === ticks;
}

/** The state dir's lock, held from {@link StateDirLock.acquire} until {@link StateDirLock.release}. */
export class StateDirLock {
  private released = false;

  private constructor(
    readonly file: string,
    private readonly content: string,
  ) {}

  /**
   * Takes `<dir>/agent.lock` (creating `dir` 0700 when missing). Throws {@link StateDirLockedError}
   * naming the holder's pid when another live process holds it; takes over a lock whose process is gone.
   */
  static acquire(dir: string, node?: string): StateDirLock {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, LOCK_FILE);
    const mine: LockHolder = { pid: process.pid, ...(processStartTicks(process.pid) ? { startTicks: processStartTicks(process.pid)! } : {}), startedAt: new Date().toISOString(), ...(node ? { node } : {}) };
    const content = JSON.stringify(mine) + '\n';
    for (let attempt = 1; ; attempt++) {
      let fd: number;
      try {
        fd = openSync(file, 'wx', 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        if (attempt >= LOCK_ATTEMPTS) throw new StateDirLockedError(`cannot take the lock ${file}: it was re-created ${LOCK_ATTEMPTS} times while this agent started; is another agent starting on state dir ${dir}?`);
        let text = '';
        try {
          text = readFileSync(file, 'utf8');
        } catch {
          continue; // removed meanwhile: try again
        }
        let holder: LockHolder | undefined;
        try {
          holder = JSON.parse(text) as LockHolder;
        } catch {
          holder = undefined; // a crash between create and write leaves it empty: nobody holds it
        }
        if (holder && holderAlive(holder)) {
          throw new StateDirLockedError(
            `state dir ${dir} is in use by another kvnet agent (pid ${holder.pid}${holder.node ? `, node ${holder.node}` : ''}, started ${holder.startedAt}); ` +
              'stop that agent first, or give this one its own --state-dir',
          );
        }
        // Stale: remove it only if it is still the file we judged (another starting agent may have replaced it).
        try {
          if (readFileSync(file, 'utf8') === text) unlinkSync(file);
        } catch {
          // gone already
        }
        continue;
      }
      try {
        writeSync(fd, content);
      } finally {
        closeSync(fd);
      }
      return new StateDirLock(file, content);
    }
  }

  /** Removes the lock file if it is still this process's. Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    try {
      if (readFileSync(this.file, 'utf8') === this.content) unlinkSync(this.file);
    } catch {
      // gone already
    }
  }
}

export interface LocalStateData {
  version: number;
  /** 32 hex digits; never changes for this state dir. */
  nodeId: string;
  /** eid → gateway bridge address `ip/len`. */
  egress: Record<string, string>;
}

export class LocalState {
  private data: LocalStateData;
  private readonly file: string;

  private constructor(dir: string, data: LocalStateData) {
    this.file = join(dir, STATE_FILE);
    this.data = data;
  }

  /** Loads the state dir's file or creates a fresh identity (creating the dir with mode 0700). */
  static load(dir: string): LocalState {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, STATE_FILE);
    let text: string | undefined;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (text !== undefined) {
      let parsed: Partial<LocalStateData>;
      try {
        parsed = JSON.parse(text) as Partial<LocalStateData>;
      } catch (err) {
        throw new Error(`state file ${file} is not valid JSON (${(err as Error).message}); move it away to start with a new node identity`);
      }
      if (typeof parsed.nodeId !== 'string' || !/^[0-9a-f]{32}$/.test(parsed.nodeId)) {
        throw new Error(`state file ${file} has no valid nodeId; move it away to start with a new node identity`);
      }
      return new LocalState(dir, { version: STATE_VERSION, nodeId: parsed.nodeId, egress: { ...(parsed.egress ?? {}) } });
    }
    const state = new LocalState(dir, { version: STATE_VERSION, nodeId: randomBytes(16).toString('hex'), egress: {} });
    state.save();
    return state;
  }

  get nodeId(): string {
    return this.data.nodeId;
  }

  get egress(): ReadonlyMap<string, string> {
    return new Map(Object.entries(this.data.egress));
  }

  /** Replaces the egress table; writes the file only when something changed. */
  setEgress(next: ReadonlyMap<string, string>): void {
    const obj = Object.fromEntries([...next.entries()].sort(([a], [b]) => a.localeCompare(b)));
    if (JSON.stringify(obj) === JSON.stringify(this.data.egress)) return;
    this.data = { ...this.data, egress: obj };
    this.save();
  }

  save(): void {
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.data, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}
