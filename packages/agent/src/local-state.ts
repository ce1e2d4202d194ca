/**
 * What one agent keeps on its own disk (`<state dir>/agent-state.json`): its persistent node
 * identity, so a restarted agent takes over its previous incarnation's records instead of conflicting
 * with them, and the gateway bridge addresses it gave its local endpoints (host-local, so not in the
 * cluster store). Written atomically (temp file + rename).
 */

import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const STATE_FILE = 'agent-state.json';
const STATE_VERSION = 1;

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
