import test from 'ava';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir } from '../../../test/support/process.ts';
import { decodeText, encodeText, hasCode, openStore, parseStoreUrl } from '../src/index.ts';
import { openLocalStore } from '../src/local-store.ts';
import { runComplianceSuite } from './compliance.ts';

const dir = makeTempDir('local-store');
const LOCKER = fileURLToPath(new URL('./fixtures/sqlite-locker.ts', import.meta.url));
const CLIENT = fileURLToPath(new URL('./fixtures/store-client.ts', import.meta.url));

function spawnTs(file: string, args: string[]) {
  const child = spawn(process.execPath, ['--import', 'tsx', file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  process.on('exit', () => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const firstLine = new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
    });
    child.on('close', (code) => reject(new Error(`${file} exited ${code}: ${stderr.slice(-1500)}`)));
  });
  const done = new Promise<number | null>((resolve) => child.on('close', resolve));
  return { child, firstLine, done };
}

let currentFile = '';
runComplianceSuite(test, () => ({
  backend: 'local',
  url: (label) => {
    currentFile = join(dir, `${label}.db`);
    return `local://${currentFile}`;
  },
  open: (url, options) => openStore(url, options),
  outage: async () => {
    const locker = spawnTs(LOCKER, [currentFile]);
    await locker.firstLine;
    return {
      readsAvailable: true,
      restore: async () => {
        locker.child.kill('SIGKILL');
        await locker.done;
      },
    };
  },
}));

test('a watch in one process sees writes made by other processes', async (t) => {
  const url = `local://${join(dir, 'cross-process.db')}`;
  const store = await openStore(url);
  t.teardown(() => store.close());
  await store.put('counter', encodeText('0'));
  const listing = await store.list('');
  const seen: string[] = [];
  const controller = new AbortController();
  const watching = (async () => {
    for await (const batch of store.watch('', listing.revision, { signal: controller.signal })) {
      for (const e of batch.events) if (e.type === 'put') seen.push(decodeText(e.value));
      if (seen.length >= 100) controller.abort();
    }
  })();
  const writers = [0, 1].map(() => spawnTs(CLIENT, [url, 'cas-counter', 'counter', '50', String(Date.now() + 1500)]));
  for (const w of writers) t.is(await w.done, 0);
  const timer = setTimeout(() => controller.abort(), 10_000);
  await watching;
  clearTimeout(timer);
  t.deepEqual(seen, Array.from({ length: 100 }, (_, i) => String(i + 1)), 'every increment of both processes, in order');
});

test('a watch from a revision older than the retained history is told to re-list', async (t) => {
  const address = parseStoreUrl(`local://${join(dir, 'trim.db')}`);
  const store = await openLocalStore(address, { logRetainRevisions: 50 });
  t.teardown(() => store.close());
  const old = await store.list('k');
  for (let i = 0; i < 120; i++) await store.put(`k/${i % 7}`, encodeText(String(i)));
  const err = await t.throwsAsync(async () => {
    for await (const _ of store.watch('k', old.revision)) {
      // the first read already fails
    }
  });
  t.true(hasCode(err, 'KVNET_STORE_WATCH_RESET'), String(err));
  // A watch from a recent revision still works.
  const recent = await store.list('k');
  await store.put('k/new', encodeText('x'));
  for await (const batch of store.watch('k', recent.revision)) {
    t.is(batch.events[0]!.key, 'k/new');
    break;
  }
});

test('keys of a lease whose owner died while no process had the file open are gone on the next open', async (t) => {
  const url = `local://${join(dir, 'orphan.db')}`;
  const holder = spawnTs(CLIENT, [url, 'hold-lease', 'eph/k', '1']);
  await holder.firstLine;
  holder.child.kill('SIGKILL');
  await holder.done;
  await new Promise((r) => setTimeout(r, 1_500));
  const store = await openStore(url);
  t.teardown(() => store.close());
  t.is(await store.get('eph/k'), undefined);
});

test('opening a store whose directory cannot be created fails with a clear error', async (t) => {
  const err = await t.throwsAsync(openStore('local:///proc/kvnet-cannot-exist/store.db'));
  t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), String(err));
  t.regex(err!.message, /\/proc\/kvnet-cannot-exist\/store\.db/);
});
