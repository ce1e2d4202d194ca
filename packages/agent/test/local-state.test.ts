/**
 * The state dir's lock with real processes: a live holder (another process) makes a second agent
 * refuse, naming the holder's pid; the lock of a process that is gone is taken over; the node
 * identity survives. No root needed.
 */

import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { holderAlive, LocalState, LOCK_FILE, processStartTicks, StateDirLock } from '../src/local-state.ts';
import { makeTempDir, removeTempDir, REPO_ROOT } from '../../../test/support/process.ts';

const MODULE = join(REPO_ROOT, 'packages/agent/src/local-state.ts');

/** Another process that takes the lock and holds it until killed; resolves once it holds it. */
function holder(dir: string): Promise<{ pid: number; kill: () => Promise<void> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
    `const { StateDirLock } = await import(${JSON.stringify(MODULE)}); StateDirLock.acquire(${JSON.stringify(dir)}, 'h9'); console.log('locked'); setInterval(() => {}, 1000);`,
  ], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('locked')) resolve({ pid: child.pid!, kill: async () => { child.kill('SIGKILL'); await gone; } });
    });
    child.once('exit', (code) => reject(new Error(`lock holder exited ${code}`)));
  });
}

test('a live holder is refused with its pid; its lock is taken over once it is gone', async (t) => {
  const dir = makeTempDir('lock');
  try {
    const other = await holder(dir);
    const err = t.throws(() => StateDirLock.acquire(dir, 'h1'), { code: 'KVNET_STATE_DIR_LOCKED' });
    t.regex(err!.message, new RegExp(`^state dir ${dir} is in use by another kvnet agent \\(pid ${other.pid}, node h9, started [0-9T:.-]+Z\\); stop that agent first, or give this one its own --state-dir$`));
    await other.kill(); // kill -9: the lock file stays behind, naming a dead process
    t.true(existsSync(join(dir, LOCK_FILE)));
    const lock = StateDirLock.acquire(dir, 'h1');
    t.like(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')), { pid: process.pid, node: 'h1' });
    t.throws(() => StateDirLock.acquire(dir, 'h1'), { code: 'KVNET_STATE_DIR_LOCKED' }, 'a second agent in the same process is refused too');
    lock.release();
    t.false(existsSync(join(dir, LOCK_FILE)), 'release removes the lock file');
  } finally {
    removeTempDir(dir);
  }
});

test('a reused pid is not mistaken for the holder; an empty lock file (crash while writing) is taken over', (t) => {
  const dir = makeTempDir('lock');
  try {
    // our own pid, but another start time: the process that wrote it is gone
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: process.pid, startTicks: '1', startedAt: 'then' }));
    t.false(holderAlive({ pid: process.pid, startTicks: '1', startedAt: 'then' }));
    t.true(holderAlive({ pid: process.pid, startTicks: processStartTicks(process.pid)!, startedAt: 'now' }));
    StateDirLock.acquire(dir).release();
    writeFileSync(join(dir, LOCK_FILE), '');
    StateDirLock.acquire(dir).release();
    t.pass();
  } finally {
    removeTempDir(dir);
  }
});

test('the node identity is kept across restarts of the state dir', (t) => {
  const dir = makeTempDir('state');
  try {
    const id = LocalState.load(dir).nodeId;
    t.regex(id, /^[0-9a-f]{32}$/);
    t.is(LocalState.load(dir).nodeId, id);
  } finally {
    removeTempDir(dir);
  }
});
