/**
 * The store's state as the agent knows it (StoreHealth: pure, with a hand-driven clock) and the one
 * guard that makes the faces fail at once while it is known to be down (store-guard.ts), on a real
 * embedded store whose write lock another process holds — the embedded store's outage: reads work,
 * every write waits and fails. No root needed.
 */

import test from 'ava';
import { join } from 'node:path';
import { openStore, encodeText, type KVStore } from '@kvnet/store';
import { pino } from 'pino';
import { ClusterMirror, StoreHealth } from '../src/cluster-mirror.ts';
import { guardStore } from '../src/store-guard.ts';
import { makeTempDir, removeTempDir, startProcess, waitFor, REPO_ROOT } from '../../../test/support/process.ts';

const URL = 'etcd://198.18.0.9:2379/kvnet';

test('unavailable from the first failure until a read answers; resyncing until the mirrors listed again', (t) => {
  let now = 1_000_000;
  const health = new StoreHealth(URL, () => now);
  const changes: string[] = [];
  health.subscribe((from, to) => changes.push(`${from}→${to}`));
  t.is(health.current, 'reachable');
  t.true(health.admits());

  now += 1000;
  health.mirrors(false);
  health.failure('mirror', new Error(`cluster store ${URL} is unavailable: watch got no answer within 5000 ms`));
  health.failure('probe', new Error('get got no answer within 5000 ms'));
  t.is(health.current, 'unavailable');
  t.like(health.report(), { state: 'unavailable', since: new Date(1_001_000).toISOString(), lastError: 'get got no answer within 5000 ms' });
  t.false(health.admits(), 'calls are refused');
  t.false(health.needsWriteProbe, 'reads failed: a read answering ends it');
  now += 7000;
  t.is(health.unavailableError().message, `cluster store ${URL} is unavailable: unreachable since ${new Date(1_001_000).toISOString()} (7 s); last error: get got no answer within 5000 ms`);
  t.is(health.unavailableError().code, 'KVNET_STORE_UNAVAILABLE');

  health.probeOk(2.34);
  t.is(health.current, 'resyncing', 'it answers, but the mirrors have not listed again');
  t.true(health.admits());
  health.mirrors(true);
  t.is(health.current, 'reachable');
  t.like(health.report(), { state: 'reachable', latencyMs: 2.3 });
  t.deepEqual(changes, ['reachable→unavailable', 'unavailable→resyncing', 'resyncing→reachable']);
});

test('a failed call alone only makes the store suspect: calls still go, the probe is woken and tests the write path', (t) => {
  const health = new StoreHealth(URL, () => 0);
  const woken: string[] = [];
  health.onSuspect((error) => woken.push(error));
  health.failure('call', new Error(`cluster store ${URL} is unavailable: put got no answer within 5000 ms`));
  health.failure('call', new Error('txn got no answer within 5000 ms'));
  t.is(health.current, 'reachable');
  t.true(health.admits(), 'one slow answer on a loaded store is not an outage');
  t.is(health.suspect, 'txn got no answer within 5000 ms');
  t.like(health.report(), { state: 'reachable', suspect: 'txn got no answer within 5000 ms' });
  t.deepEqual(woken, ['put got no answer within 5000 ms'], 'the probe is woken once per suspicion');
  t.true(health.needsWriteProbe);
  health.probeOk(1);
  t.is(health.suspect, 'txn got no answer within 5000 ms', 'a read answering says nothing about writes');
  health.callOk();
  t.is(health.suspect, undefined, 'the write path answered');
  t.false(health.needsWriteProbe);
  t.is(health.report().suspect, undefined);
  health.failure('call', new Error('x'));
  t.is(woken.length, 2, 'a new suspicion wakes the probe again');
});

test('an outage seen only by the write path ends only when the write path answers, not when a read does', (t) => {
  const health = new StoreHealth(URL, () => 0);
  health.failure('call', new Error('put got no answer within 5000 ms'));
  health.failure('write-probe', new Error('txn got no answer within 5000 ms'));
  t.is(health.current, 'unavailable', 'the probe confirmed it');
  t.false(health.admits());
  t.is(health.suspect, undefined);
  t.true(health.needsWriteProbe);
  t.like(health.report(), { lastError: 'txn got no answer within 5000 ms' });
  health.probeOk(1);
  t.is(health.current, 'unavailable', 'reads working says nothing about writes');
  health.failure('write-probe', new Error('txn got no answer within 5000 ms'));
  t.true(health.needsWriteProbe, 'the write probe failed again');
  health.callOk();
  t.is(health.current, 'reachable');
  t.false(health.needsWriteProbe);
  health.failure('write-probe', new Error('x'));
  health.failure('probe', new Error('y'));
  t.false(health.needsWriteProbe, 'once reads fail too, a read answering ends the outage');
  health.probeOk(1);
  t.is(health.current, 'reachable');
});

async function withLockedStore(fn: (store: KVStore, lock: () => Promise<() => Promise<void>>) => Promise<void>): Promise<void> {
  const dir = makeTempDir('guard');
  const db = join(dir, 'store.db');
  const store = await openStore(`local://${db}`, { timeoutMs: 1000 });
  try {
    await fn(store, async () => {
      const locker = startProcess('sqlite-locker', process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'test/cluster/sqlite-lock.ts'), db], { cwd: REPO_ROOT });
      await waitFor('the write lock', () => locker.log().includes('locked'), 30_000);
      return () => locker.kill();
    });
  } finally {
    await store.close();
    removeTempDir(dir);
  }
}

test('guarded store on a store whose writes hang: the first failed write makes the store suspect, the mirror\'s probe confirms the outage at once, later calls are refused by the guard; the write path answering ends it', async (t) => {
  await withLockedStore(async (store, lock) => {
    const health = new StoreHealth(store.url);
    const guarded = guardStore(store, health);
    const mirror = new ClusterMirror({
      store,
      logger: pino({ level: 'silent' }),
      node: 'h1',
      onChange: () => undefined,
      onStoreError: () => undefined,
      onStoreBack: () => undefined,
      health,
    });
    mirror.start();
    try {
      await guarded.put('k', encodeText('1'));
      await mirror.synced(10_000);
      const unlock = await lock();
      const probed = new Promise<number>((resolve) => health.subscribe((_from, to) => to === 'unavailable' && resolve(Date.now())));
      const first = await t.throwsAsync(guarded.put('k', encodeText('2')), { code: 'KVNET_STORE_UNAVAILABLE' });
      const failedAt = Date.now();
      t.regex(first!.message, /got no answer within 1000 ms/, 'the first write waits for the store and fails with its message');
      const confirmedAt = await probed;
      t.log(`outage confirmed by the write probe ${confirmedAt - failedAt} ms after the call failed (probe interval 2000 ms, store timeout 1000 ms)`);
      t.is(health.current, 'unavailable');
      t.true(health.needsWriteProbe, 'seen by the write path: a read answering will not end it');
      const again = await t.throwsAsync(guarded.put('k', encodeText('3')), { code: 'KVNET_STORE_UNAVAILABLE' });
      t.regex(again!.message, /is unavailable: unreachable since \S+ \(\d+ s\); last error: .*got no answer within 1000 ms/, 'refused by the guard, naming since when and why');
      t.is(Buffer.from((await store.get('k'))!.value).toString(), '1', 'nothing was written meanwhile');
      await unlock();
      await waitFor('the write probe to end the outage', () => health.current === 'reachable', 15_000, 50);
      await guarded.put('k', encodeText('4'));
      t.is(Buffer.from((await guarded.get('k'))!.value).toString(), '4');
    } finally {
      await mirror.stop();
    }
  });
});

test('guarded store: a write that fails while the store still answers is not followed by refusals', async (t) => {
  await withLockedStore(async (store, lock) => {
    const health = new StoreHealth(store.url);
    const guarded = guardStore(store, health);
    const unlock = await lock();
    await t.throwsAsync(guarded.put('k', encodeText('1')), { code: 'KVNET_STORE_UNAVAILABLE' });
    t.truthy(health.suspect);
    await unlock();
    // no probe ran (no mirror here): the next call goes to the store, which answers
    await guarded.put('k', encodeText('2'));
    t.is(health.suspect, undefined, 'the answer ended the suspicion');
    t.is(health.current, 'reachable');
    t.is(Buffer.from((await guarded.get('k'))!.value).toString(), '2');
  });
});
