/**
 * The store compliance suite: one set of tests for the {@link KVStore} contract, run unchanged
 * against every backend, each a real server (`consul.test.ts`, `etcd.test.ts`, `zookeeper.test.ts`
 * through {@link runServerComplianceSuite}, `local.test.ts` with a target of its own). A backend
 * declares what it cannot do through {@link KVStore.capabilities}; the suite then checks the weaker
 * promise, never nothing.
 */

import type { ExecutionContext, TestFn } from 'ava';
import { spawnJsonChild, type JsonChild } from '../../../test/support/json-child.ts';
import { fileURLToPath } from 'node:url';
import type { KvServer } from '../../../test/support/kv-servers.ts';
import {
  decodeText,
  encodeText,
  hasCode,
  openStore,
  PrefixMirror,
  type KVStore,
  type StoreBackendName,
  type StoreOptions,
  type TxnOp,
  type WatchEvent,
} from '../src/index.ts';
import { collect, msUntilGone, storesClosedAfter } from './fixtures/harness.ts';

export interface ComplianceTarget {
  readonly backend: StoreBackendName;
  /** A store URL whose prefix (or file) is unique to `label`. */
  url(label: string): string;
  /** Opens a client; the suite closes it. */
  open(url: string, options?: StoreOptions): Promise<KVStore>;
  /**
   * Makes the store unanswerable for clients that are already open (stop the server, or hold the
   * local database's write lock from another process); `restore()` brings it back with its data.
   * `readsAvailable`: reads keep working during this outage (SQLite in WAL mode never blocks
   * readers), and the suite checks that they do.
   */
  outage(): Promise<{ restore(): Promise<void>; readsAvailable?: boolean }>;
  /** Stops and starts the server process with its data (absent for the embedded store). */
  restart?: () => Promise<void>;
  /** A URL where no server listens (absent for the embedded store). */
  unreachableUrl?: () => string;
}

const CLIENT = fileURLToPath(new URL('./fixtures/store-client.ts', import.meta.url));
const LEASE_TTL_S = 2;
const OUTAGE_TIMEOUT_MS = 1_500;
/** The discard port: nothing listens on it on a test machine, so a URL naming it is unreachable. */
const UNREACHABLE_PORT = 9;
/** The URL scheme of each server backend. */
const SCHEME = { etcd: 'etcd', consul: 'consul', zookeeper: 'zk' } as const satisfies Record<KvServer['backend'], string>;

/** A client process against the same server (test/support/json-child.ts); `firstLine` is its first report. */
function runClient(args: string[]): JsonChild & { firstLine: Promise<unknown> } {
  const child = spawnJsonChild(CLIENT, args);
  const firstLine = child.next(() => true);
  firstLine.catch(() => {}); // callers that never await it must not see an unhandled rejection
  return Object.assign(child, { firstLine });
}

const text = (s: string): Uint8Array => encodeText(s);
/** `capabilities.watchReadsWholeRange` of each backend: only Consul's blocking queries answer with the whole range. */
const WATCH_READS_WHOLE_RANGE: Record<StoreBackendName, boolean> = { consul: true, etcd: false, zookeeper: false, local: false };

/**
 * The suite against a real etcd, Consul or ZooKeeper server (from `useKvServer`), the same way for
 * each: a key prefix per test, an outage is the server stopped (data kept) and a restart is stop and
 * start, and a URL on the discard port stands for a server that is not there.
 */
export function runServerComplianceSuite(test: TestFn, server: KvServer): void {
  runComplianceSuite(test, () => ({
    backend: server.backend,
    url: (label) => server.url(`kvnet-test/${label}`),
    open: (url, options) => openStore(url, options),
    outage: async () => {
      await server.stop();
      return { restore: () => server.start() };
    },
    restart: async () => {
      await server.stop();
      await server.start();
    },
    unreachableUrl: () => `${SCHEME[server.backend]}://127.0.0.1:${UNREACHABLE_PORT}/kvnet-dead`,
  }));
}

export function runComplianceSuite(test: TestFn, target: () => ComplianceTarget): void {
  let n = 0;
  const opened = storesClosedAfter(test);
  const fresh = async (t: ExecutionContext, options?: StoreOptions): Promise<{ store: KVStore; url: string }> => {
    const url = target().url(`t${++n}-${t.title.replace(/[^a-z0-9]+/gi, '-').slice(0, 30)}`);
    const store = await target().open(url, options);
    opened.push(store);
    return { store, url };
  };

  // ---- tests that stop or lock the store run first, one at a time ----

  test.serial('calls fail fast with a typed error naming the URL while the store is unreachable, and work again after', async (t) => {
    const { store } = await fresh(t, { timeoutMs: OUTAGE_TIMEOUT_MS });
    await store.put('k', text('before'));
    const outage = await target().outage();
    try {
      if (outage.readsAvailable) {
        t.is(decodeText((await store.get('k'))!.value), 'before', 'reads still answer during this outage');
        t.deepEqual((await store.list('')).entries.map((e) => e.key), ['k']);
      }
      const calls = [
        ['put', () => store.put('k', text('during'))],
        ['putIf', () => store.putIf('k2', text('x'), { absent: true })],
        ...(outage.readsAvailable
          ? []
          : ([
              ['get', () => store.get('k')],
              ['list', () => store.list('')],
            ] as const)),
      ] as const;
      for (const [what, call] of calls) {
        const started = Date.now();
        const err = await t.throwsAsync(call(), undefined, `${what} during the outage`);
        const took = Date.now() - started;
        t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), `${what}: expected KVNET_STORE_UNAVAILABLE, got ${String(err)}`);
        t.true(err!.message.includes(store.url), `${what}: message names the URL: ${err!.message}`);
        // bounded: the configured timeout plus scheduling slack on a busy machine, never a hang
        t.true(took < OUTAGE_TIMEOUT_MS + 3_000, `${what} failed after ${took} ms`);
      }
    } finally {
      await outage.restore();
    }
    // the same client works again once the store is back (it may need a moment to reconnect)
    let value: string | undefined;
    for (let i = 0; i < 60 && value === undefined; i++) {
      try {
        await store.put('k', text('after'));
        value = decodeText((await store.get('k'))!.value);
      } catch {
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    t.is(value, 'after');
  });

  test.serial('a live watch survives a server restart: it resumes or asks for a re-list, and no change is missed', async (t) => {
    const restart = target().restart;
    if (!restart) {
      // The embedded store has no server process; its cross-process watch is covered by local.test.ts.
      t.pass('no server to restart for this backend');
      return;
    }
    const { store } = await fresh(t, { timeoutMs: OUTAGE_TIMEOUT_MS });
    const prefix = 'restart';
    const mirror = new PrefixMirror(store, prefix);
    mirror.start();
    await mirror.synced;
    const wrote = new Map<string, string>();
    const write = async (k: string, v: string, tries = 80): Promise<void> => {
      for (let i = 0; ; i++) {
        try {
          await store.put(`${prefix}/${k}`, text(v));
          wrote.set(`${prefix}/${k}`, v);
          return;
        } catch (err) {
          if (i >= tries) throw err;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    };
    for (let i = 0; i < 20; i++) await write(`before-${i}`, String(i));
    await write('overwritten', 'old');
    await restart();
    for (let i = 0; i < 20; i++) await write(`after-${i}`, String(i));
    await write('overwritten', 'new');
    await store.delete(`${prefix}/before-3`);
    wrote.delete(`${prefix}/before-3`);
    const deadline = Date.now() + 30_000;
    const snapshot = (): Map<string, string> => new Map([...mirror.view].map(([k, e]) => [k, decodeText(e.value)]));
    while (Date.now() < deadline && JSON.stringify([...snapshot()].sort()) !== JSON.stringify([...wrote].sort())) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await mirror.stop();
    t.deepEqual([...snapshot()].sort(), [...wrote].sort());
  });

  // ---- everything else runs concurrently ----

  test('get, put, delete and list round-trip with revisions', async (t) => {
    const { store } = await fresh(t);
    t.is(await store.get('a/b'), undefined);
    const r1 = await store.put('a/b', text('one'));
    const e1 = await store.get('a/b');
    t.is(decodeText(e1!.value), 'one');
    t.is(e1!.revision, r1);
    const r2 = await store.put('a/b', text('two'));
    t.not(r2, r1, 'a write changes the revision');
    t.is((await store.get('a/b'))!.revision, r2);
    await store.put('a/c/d', text('deep'));
    await store.put('a', text('the prefix key itself'));
    const listing = await store.list('a');
    t.deepEqual(
      listing.entries.map((e) => [e.key, decodeText(e.value)]),
      [
        ['a/b', 'two'],
        ['a/c/d', 'deep'],
      ],
    );
    t.true(await store.delete('a/b'));
    t.false(await store.delete('a/b'), 'deleting a missing key says so');
    t.is(await store.get('a/b'), undefined);
    t.deepEqual(
      (await store.list('')).entries.map((e) => e.key),
      ['a', 'a/c/d'],
    );
  });

  test('a prefix matches whole segments only: net/a does not list net/ab', async (t) => {
    const { store } = await fresh(t);
    await store.put('net/a/1', text('x'));
    await store.put('net/ab/1', text('y'));
    await store.put('net/a', text('z'));
    await store.put('net/a-b', text('w'));
    t.deepEqual(
      (await store.list('net/a')).entries.map((e) => e.key),
      ['net/a/1'],
    );
    t.deepEqual(
      (await store.list('net')).entries.map((e) => e.key),
      ['net/a', 'net/a-b', 'net/a/1', 'net/ab/1'].sort(),
    );
    t.deepEqual((await store.list('nothing/here')).entries, []);
  });

  test('list with startsWith returns only the keys whose path below the prefix starts with it, sorted', async (t) => {
    const { store } = await fresh(t);
    const all = ['net/a', 'net/a/wx', 'net/a/x', 'net/a/x/deeper', 'net/a/xy', 'net/a/y', 'net/ax', 'net/ax/1', 'net/b/x', 'x/1', 'xtop', 'ynet/a/x'];
    // written out of order, so a sorted answer is the store's doing
    for (const key of [...all].reverse()) await store.put(key, text(`v:${key}`));
    const keys = async (prefix: string, startsWith: string): Promise<string[]> => {
      const listing = await store.list(prefix, { startsWith });
      for (const e of listing.entries) t.is(decodeText(e.value), `v:${e.key}`);
      return listing.entries.map((e) => e.key);
    };
    t.deepEqual(await keys('net/a', 'x'), ['net/a/x', 'net/a/x/deeper', 'net/a/xy'], 'not net/a/y, net/ax nor net/a itself');
    t.deepEqual(await keys('net', 'a'), ['net/a', 'net/a/wx', 'net/a/x', 'net/a/x/deeper', 'net/a/xy', 'net/a/y', 'net/ax', 'net/ax/1'], 'ends inside a segment');
    t.deepEqual(await keys('', 'x'), ['x/1', 'xtop'], "below '' the whole key starts with it");
    t.deepEqual(await keys('net/a', 'xy'), ['net/a/xy']);
    t.deepEqual(await keys('net/a', 'z'), []);
    t.deepEqual(await keys('nothing/here', 'x'), []);
    t.deepEqual(await keys('net/a', 'x'.repeat(255)), [], 'the longest accepted startsWith');
    t.deepEqual(
      (await store.list('net/a')).entries.map((e) => e.key),
      ['net/a/wx', 'net/a/x', 'net/a/x/deeper', 'net/a/xy', 'net/a/y'],
      'without startsWith: every key below the prefix, as before',
    );
    const listed = (await store.list('net/a', { startsWith: 'xy' })).entries[0]!;
    t.is(listed.revision, (await store.get('net/a/xy'))!.revision);
  });

  test('capabilities say whether a watch answer carries the whole watched range', async (t) => {
    const { store } = await fresh(t);
    t.is(store.capabilities.watchReadsWholeRange, WATCH_READS_WHOLE_RANGE[store.backend]);
  });

  test('create-only and compare-and-swap report a lost race as a value, never overwrite', async (t) => {
    const { store } = await fresh(t);
    const c1 = await store.putIf('k', text('first'), { absent: true });
    t.true(c1.ok);
    const c2 = await store.putIf('k', text('second'), { absent: true });
    t.false(c2.ok);
    if (!c2.ok) t.is(c2.reason, 'exists');
    t.is(decodeText((await store.get('k'))!.value), 'first');

    const cur = (await store.get('k'))!;
    const u1 = await store.putIf('k', text('updated'), { revision: cur.revision });
    t.true(u1.ok);
    const stale = await store.putIf('k', text('stale'), { revision: cur.revision });
    t.false(stale.ok);
    if (!stale.ok) t.is(stale.reason, 'modified');
    t.is(decodeText((await store.get('k'))!.value), 'updated');

    const missing = await store.putIf('nope', text('x'), { revision: cur.revision });
    t.false(missing.ok);
    if (!missing.ok) t.is(missing.reason, 'missing');
    t.is(await store.get('nope'), undefined);

    const now = (await store.get('k'))!;
    const d1 = await store.deleteIf('k', cur.revision);
    t.false(d1.ok, 'delete with a stale revision is refused');
    t.truthy(await store.get('k'));
    const d2 = await store.deleteIf('k', now.revision);
    t.true(d2.ok);
    t.is(await store.get('k'), undefined);
    const d3 = await store.deleteIf('k', now.revision);
    t.false(d3.ok);
    if (!d3.ok) t.is(d3.reason, 'missing');
  });

  test('a transaction applies all of its operations or none', async (t) => {
    const { store } = await fresh(t);
    await store.put('tx/existing', text('e'));
    const existing = (await store.get('tx/existing'))!;
    const failed = await store.txn([
      { op: 'put', key: 'tx/a', value: text('a'), if: { absent: true } },
      { op: 'delete', key: 'tx/existing' },
      { op: 'check', key: 'tx/existing', if: { absent: true } },
    ]);
    t.false(failed.ok);
    t.is(await store.get('tx/a'), undefined, 'nothing written by the failed transaction');
    t.truthy(await store.get('tx/existing'));

    const done = await store.txn([
      { op: 'put', key: 'tx/a', value: text('a'), if: { absent: true } },
      { op: 'put', key: 'tx/b', value: text('b') },
      { op: 'check', key: 'tx/existing', if: { revision: existing.revision } },
      { op: 'delete', key: 'tx/existing', if: { revision: existing.revision } },
      { op: 'delete', key: 'tx/never-existed' },
    ]);
    t.true(done.ok);
    if (done.ok) {
      t.is(done.revisions.length, 5);
      t.is((await store.get('tx/a'))!.revision, done.revisions[0] as string);
    }
    t.deepEqual(
      (await store.list('tx')).entries.map((e) => e.key),
      ['tx/a', 'tx/b'],
    );
  });

  test('20 concurrent create-only puts of one key from 20 separate clients: exactly one wins', async (t) => {
    const { store, url } = await fresh(t);
    const clients = await Promise.all(Array.from({ length: 20 }, () => target().open(url)));
    opened.push(...clients);
    // Warm every connection first so the puts really race instead of queueing behind connects.
    await Promise.all(clients.map((c) => c.get('race/warmup')));
    const results = await Promise.all(clients.map((c, i) => c.putIf('race/key', text(`client-${i}`), { absent: true })));
    const winners = results.flatMap((r, i) => (r.ok ? [i] : []));
    t.is(winners.length, 1, `winners: ${winners.join(', ')}`);
    for (const r of results) if (!r.ok) t.is(r.reason, 'exists');
    t.is(decodeText((await store.get('race/key'))!.value), `client-${winners[0]}`);
  });

  test('two client processes CAS-increment one counter 500 times each: final value 1000', async (t) => {
    const { store, url } = await fresh(t);
    await store.put('counter', text('0'));
    const start = Date.now() + 3_000;
    const clients = [0, 1].map(() => runClient([url, 'cas-counter', 'counter', '500', String(start)]));
    const results = await Promise.all(clients.map((c) => c.done));
    for (const r of results) t.is(r.code, 0, r.stderr);
    t.is(decodeText((await store.get('counter'))!.value), '1000');
    const conflicts = results.reduce((s, r) => s + (r.lines[0] as { conflicts: number }).conflicts, 0);
    t.log(`lost races (retried): ${conflicts}`);
  });

  test('a watch from a listing revision sees 1000 rapid writes in order, each once', async (t) => {
    const { store } = await fresh(t);
    await store.put('w/seed', text('seed'));
    const listing = await store.list('w');
    const expected = Array.from({ length: 1000 }, (_, i) => `w/k${String(i).padStart(4, '0')}`);
    const watching = collect(store, 'w', listing.revision, (evs) => new Set(evs.map((e) => e.key)).size >= 1000, 60_000);
    for (const key of expected) await store.put(key, text(key));
    const { events, reset } = await watching;
    t.is(reset, undefined, `watch failed: ${String(reset)}`);
    const keys = events.map((e) => e.key);
    t.is(new Set(keys).size, keys.length, 'no key delivered twice');
    t.deepEqual(keys, expected, 'every write, in write order');
    t.true(events.every((e) => e.type === 'put' && decodeText(e.value) === e.key));
  });

  test('a watch delivers deletes and every revision change of a key', async (t) => {
    const { store } = await fresh(t);
    const listing = await store.list('d');
    const watching = collect(store, 'd', listing.revision, (evs) => evs.some((e) => e.type === 'delete' && e.key === 'd/x'), 30_000);
    await store.put('d/x', text('1'));
    await store.put('d/y', text('y'));
    await store.put('d/x', text('2'));
    await store.delete('d/x');
    const { events, reset } = await watching;
    t.is(reset, undefined, String(reset));
    const last = events.at(-1)!;
    t.is(last.type, 'delete');
    t.is(last.key, 'd/x');
    t.true(events.some((e) => e.key === 'd/y' && e.type === 'put'));
    if (store.capabilities.exactHistory) {
      t.deepEqual(
        events.map((e) => `${e.type}:${e.key}${e.type === 'put' ? '=' + decodeText(e.value) : ''}`),
        ['put:d/x=1', 'put:d/y=y', 'put:d/x=2', 'delete:d/x'],
      );
    }
  });

  test('with exact history, 1000 writes to one key are each delivered', async (t) => {
    const { store } = await fresh(t);
    if (!store.capabilities.exactHistory) {
      t.pass(`${store.backend} reports state: several writes to one key may arrive as one event (checked by the other watch tests)`);
      return;
    }
    await store.put('one/key', text('-1'));
    const listing = await store.list('one');
    const watching = collect(store, 'one', listing.revision, (evs) => evs.length >= 1000, 60_000);
    for (let i = 0; i < 1000; i++) await store.put('one/key', text(String(i)));
    const { events, reset } = await watching;
    t.is(reset, undefined, String(reset));
    t.deepEqual(
      events.map((e) => (e.type === 'put' ? decodeText(e.value) : 'delete')),
      Array.from({ length: 1000 }, (_, i) => String(i)),
    );
  });

  test('a startsWith watch from a startsWith listing sees every change of its range and nothing else, with no gap', async (t) => {
    const { store } = await fresh(t);
    const range = { prefix: 'sw', startsWith: 'a' } as const;
    await store.put('sw/a1', text('a1'));
    await store.put('sw/b1', text('b1'));
    await store.put('swa', text('not below sw'));
    const listing = await store.list('sw', { startsWith: 'a' });
    t.deepEqual(listing.entries.map((e) => e.key), ['sw/a1']);
    // between the listing and the watch: the watch must still deliver what is in its range
    await store.put('sw/a2', text('early'));
    await store.put('sw/b2', text('b2'));
    await store.put('swa/1', text('not below sw'));
    await store.put('sw', text('the prefix key itself'));
    const watching = collect(store, range, listing.revision, (evs) => evs.some((e) => e.key === 'sw/a-end'), 30_000);
    await store.put('sw/b3', text('b3'));
    await store.put('sw/a', text('a'));
    await store.put('swab', text('not below sw'));
    await store.put('sw/ab/deep', text('deep'));
    await store.put('sw/c/a', text('below another segment'));
    await store.delete('sw/a1');
    await store.delete('sw/b1');
    await store.put('sw/ba', text('ba'));
    await store.put('sw/a-end', text('end'));
    const { events, batches, reset } = await watching;
    t.is(reset, undefined, `watch failed: ${String(reset)}`);
    const described = events.map((e) => `${e.type}:${e.key}${e.type === 'put' ? '=' + decodeText(e.value) : ''}`);
    t.deepEqual(events.filter((e) => !e.key.startsWith('sw/a')), [], `only keys of the range: ${described.join(' ')}`);
    if (store.capabilities.exactHistory) {
      t.deepEqual(described, ['put:sw/a2=early', 'put:sw/a=a', 'put:sw/ab/deep=deep', 'delete:sw/a1', 'put:sw/a-end=end']);
    } else {
      t.deepEqual(described.filter((d) => d.startsWith('put:')), ['put:sw/a2=early', 'put:sw/a=a', 'put:sw/ab/deep=deep', 'put:sw/a-end=end']);
      t.deepEqual(described.filter((d) => d.startsWith('delete:')), ['delete:sw/a1']);
    }
    // the listing plus the events is the range as it is now
    const view = new Map(listing.entries.map((e) => [e.key, decodeText(e.value)]));
    for (const e of events) {
      if (e.type === 'put') view.set(e.key, decodeText(e.value));
      else view.delete(e.key);
    }
    const now = await store.list('sw', { startsWith: 'a' });
    t.deepEqual([...view].sort(), now.entries.map((e) => [e.key, decodeText(e.value)]));
    t.deepEqual(now.entries.map((e) => e.key), ['sw/a', 'sw/a-end', 'sw/a2', 'sw/ab/deep']);
    // a watch of the same range goes on from the last batch's revision
    const next = collect(store, range, batches.at(-1)!.revision, (evs) => evs.length > 0, 30_000);
    await store.put('sw/b4', text('b4'));
    await store.put('sw/a3', text('a3'));
    const after = await next;
    t.is(after.reset, undefined, String(after.reset));
    t.deepEqual(after.events.map((e) => `${e.type}:${e.key}`), ['put:sw/a3']);
  });

  test('two startsWith watches on one prefix are independent, also when their listings share a revision', async (t) => {
    const { store } = await fresh(t);
    // One transaction: both ranges then have the same last change, and every backend may give both
    // listings one revision; a watch must still start from its own range's state.
    const put = (key: string, value: string): TxnOp => ({ op: 'put', key, value: text(value) });
    t.true((await store.txn([put('two/a1', 'a1'), put('two/b1', 'b1'), put('two/c1', 'c1')])).ok);
    const la = await store.list('two', { startsWith: 'a' });
    const lb = await store.list('two', { startsWith: 'b' });
    t.deepEqual(la.entries.map((e) => e.key), ['two/a1']);
    t.deepEqual(lb.entries.map((e) => e.key), ['two/b1']);
    t.log(`listing revisions: a ${la.revision}, b ${lb.revision}`);
    const wa = collect(store, { prefix: 'two', startsWith: 'a' }, la.revision, (evs) => evs.some((e) => e.key === 'two/a-end'), 30_000);
    const wb = collect(store, { prefix: 'two', startsWith: 'b' }, lb.revision, (evs) => evs.some((e) => e.key === 'two/b-end'), 30_000);
    await store.put('two/b2', text('b2'));
    await store.put('two/a1', text('a1-new'));
    await store.put('two/c1', text('c1-new'));
    await store.delete('two/b1');
    await store.put('two/a-end', text('end'));
    await store.put('two/b-end', text('end'));
    const [a, b] = await Promise.all([wa, wb]);
    t.is(a.reset, undefined, String(a.reset));
    t.is(b.reset, undefined, String(b.reset));
    const describe = (evs: readonly WatchEvent[]): string[] => evs.map((e) => `${e.type}:${e.key}${e.type === 'put' ? '=' + decodeText(e.value) : ''}`);
    t.deepEqual(describe(a.events), ['put:two/a1=a1-new', 'put:two/a-end=end']);
    if (store.capabilities.exactHistory) {
      t.deepEqual(describe(b.events), ['put:two/b2=b2', 'delete:two/b1', 'put:two/b-end=end']);
    } else {
      t.deepEqual(describe(b.events).sort(), ['delete:two/b1', 'put:two/b-end=end', 'put:two/b2=b2']);
    }
  });

  test('a PrefixMirror with startsWith mirrors only its range and says which range it covers', async (t) => {
    const { store } = await fresh(t);
    t.is(new PrefixMirror(store, 'mir').startsWith, undefined);
    await store.put('mir/a1', text('a1'));
    await store.put('mir/b1', text('b1'));
    await store.put('mira/1', text('not below mir'));
    const seen: WatchEvent[] = [];
    const mirror = new PrefixMirror(store, 'mir', { startsWith: 'a', onChange: (change) => seen.push(...change.events) });
    t.is(mirror.startsWith, 'a');
    t.is(mirror.prefix, 'mir');
    mirror.start();
    try {
      await mirror.synced;
      t.deepEqual([...mirror.view.keys()], ['mir/a1']);
      await store.put('mir/a2', text('a2'));
      await store.put('mir/b2', text('b2'));
      await store.put('mir/ab/c', text('deep'));
      await store.delete('mir/a1');
      await store.put('mir/a-end', text('end'));
      const deadline = Date.now() + 30_000;
      while (!mirror.view.has('mir/a-end') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    } finally {
      await mirror.stop();
    }
    t.deepEqual([...mirror.view.keys()].sort(), ['mir/a-end', 'mir/a2', 'mir/ab/c']);
    t.deepEqual(seen.filter((e) => !e.key.startsWith('mir/a')), [], 'no change outside the range reached the mirror');
    t.is(mirror.resyncs, 0);
  });

  test('a watch started after the writes, from an older revision, still sees them or asks for a re-list', async (t) => {
    const { store } = await fresh(t);
    await store.put('late/seed', text('s'));
    const old = await store.list('late');
    for (let i = 0; i < 50; i++) await store.put(`late/k${i}`, text(String(i)));
    await store.delete('late/seed');
    const { events, reset } = await collect(store, 'late', old.revision, (evs) => evs.some((e) => e.type === 'delete'), 15_000);
    if (reset !== undefined) {
      t.true(hasCode(reset, 'KVNET_STORE_WATCH_RESET'), `a failed watch must say re-list: ${String(reset)}`);
      return;
    }
    const puts = events.filter((e) => e.type === 'put').map((e) => e.key);
    t.deepEqual(new Set(puts), new Set(Array.from({ length: 50 }, (_, i) => `late/k${i}`)));
    t.true(events.some((e) => e.type === 'delete' && e.key === 'late/seed'));
  });

  test('a watch from a revision this client never listed is delivered in full or reset, never silently partial', async (t) => {
    const { store, url } = await fresh(t);
    const other = await target().open(url);
    opened.push(other);
    await store.put('x/1', text('1'));
    const foreign = await other.list('x');
    await store.put('x/2', text('2'));
    await store.delete('x/1');
    const { events, reset } = await collect(store, 'x', foreign.revision, (evs) => evs.some((e) => e.type === 'delete'), 10_000);
    if (reset !== undefined) {
      t.true(hasCode(reset, 'KVNET_STORE_WATCH_RESET'), String(reset));
    } else {
      t.deepEqual(
        events.map((e) => `${e.type}:${e.key}`),
        ['put:x/2', 'delete:x/1'],
      );
    }
  });

  test('an ephemeral key stays while its owner process lives and disappears after SIGKILL within TTL + grace', async (t) => {
    const { store, url } = await fresh(t);
    const holder = runClient([url, 'hold-lease', 'eph/owner', String(LEASE_TTL_S)]);
    const ready = (await holder.firstLine) as { ready: boolean; ttlMs: number; graceMs: number };
    t.true(ready.ready);
    // alive through several TTLs
    const aliveUntil = Date.now() + 3 * ready.ttlMs + 500;
    while (Date.now() < aliveUntil) {
      t.truthy(await store.get('eph/owner'), 'the key must stay while its owner renews the lease');
      await new Promise((r) => setTimeout(r, 250));
    }
    process.kill(holder.pid, 'SIGKILL');
    const killedAt = Date.now();
    await holder.done;
    const limit = ready.ttlMs + ready.graceMs + 2_000;
    const goneAfter = await msUntilGone(store, 'eph/owner', killedAt, limit + 5_000, 100);
    t.log(`ttl ${ready.ttlMs} ms, grace ${ready.graceMs} ms, gone ${goneAfter} ms after SIGKILL`);
    t.true(goneAfter >= 0, 'the key must disappear');
    t.true(goneAfter <= limit, `gone after ${goneAfter} ms, limit ${limit} ms`);
  });

  test('revoking a lease removes its keys at once and resolves lost; re-putting rebinds a key', async (t) => {
    const { store } = await fresh(t);
    const lease = await store.grantLease(LEASE_TTL_S);
    t.true(lease.ttlMs >= 1000);
    await store.put('lease/a', text('a'), { lease });
    await store.put('lease/b', text('b'), { lease });
    await store.put('lease/plain', text('p'));
    const other = await store.grantLease(LEASE_TTL_S);
    await store.put('lease/b', text('b2'), { lease: other });
    await lease.revoke();
    t.is(await lease.lost, 'revoked');
    // The revoke is applied by the server; some backends need a moment to propagate deletes.
    let a = await store.get('lease/a');
    for (let i = 0; i < 40 && a; i++) {
      await new Promise((r) => setTimeout(r, 100));
      a = await store.get('lease/a');
    }
    t.is(a, undefined);
    t.is(decodeText((await store.get('lease/b'))!.value), 'b2', 'rebound to the other lease, still alive');
    t.truthy(await store.get('lease/plain'));
    await other.revoke();
  });

  test('a released lease is no longer renewed: its keys expire by TTL', async (t) => {
    const { store } = await fresh(t);
    const lease = await store.grantLease(LEASE_TTL_S);
    await store.put('rel/k', text('x'), { lease });
    await lease.release();
    const released = Date.now();
    t.truthy(await store.get('rel/k'), 'still there right after release');
    const goneAfter = await msUntilGone(store, 'rel/k', released, lease.ttlMs + lease.expiryGraceMs + 5_000, 100);
    t.true(goneAfter >= 0, 'expired');
  });

  test('values of 256 KiB round-trip byte for byte', async (t) => {
    const { store } = await fresh(t);
    const big = new Uint8Array(256 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
    t.true(store.capabilities.maxValueBytes >= big.length);
    await store.put('big/v', big);
    const back = await store.get('big/v');
    t.is(back!.value.length, big.length);
    t.true(Buffer.from(back!.value).equals(Buffer.from(big)));
    const listed = (await store.list('big')).entries[0]!;
    t.true(Buffer.from(listed.value).equals(Buffer.from(big)));
  });

  test('malformed keys are refused with a clear error before anything reaches the server', async (t) => {
    // Against a URL where nothing listens, the error is still about the key: the check comes first.
    const dead = target().unreachableUrl;
    const store = dead ? await target().open(dead(), { timeoutMs: OUTAGE_TIMEOUT_MS }) : (await fresh(t)).store;
    if (dead) opened.push(store);
    for (const [key, why] of [
      ['', 'empty'],
      ['a//b', 'empty segment'],
      ['/a', 'start'],
      ['a/', 'end'],
      ['a/../b', '".."'],
      ['a/./b', '"."'],
      ['a\0b', 'NUL'],
      ['a b', 'character " "'],
    ] as const) {
      for (const call of [() => store.get(key), () => store.put(key, text('x')), () => store.putIf(key, text('x'), { absent: true })]) {
        const err = await t.throwsAsync(call());
        t.true(hasCode(err, 'KVNET_STORE_INVALID_KEY'), `${JSON.stringify(key)}: ${String(err)}`);
        t.true(err!.message.includes(why), `message for ${JSON.stringify(key)} explains: ${err!.message}`);
      }
    }
    const err = await t.throwsAsync(store.list('a//b'));
    t.true(hasCode(err, 'KVNET_STORE_INVALID_KEY'));
    await t.throwsAsync(store.txn([{ op: 'put', key: 'ok', value: text('x') }, { op: 'delete', key: '../x' }]), {
      message: /invalid store key/,
    });
    if (!dead) t.is(await store.get('ok'), undefined, 'a transaction with one bad key writes nothing');
  });

  test('a malformed startsWith is refused with InvalidKeyError naming it before anything reaches the server', async (t) => {
    const dead = target().unreachableUrl;
    const store = dead ? await target().open(dead(), { timeoutMs: OUTAGE_TIMEOUT_MS }) : (await fresh(t)).store;
    if (dead) opened.push(store);
    for (const bad of ['', 'a/b', 'a b', 'x'.repeat(256), 'a\0']) {
      const what = JSON.stringify(bad.length > 20 ? `${bad.slice(0, 20)}…` : bad);
      const listErr = await t.throwsAsync(store.list('net', { startsWith: bad }));
      t.true(hasCode(listErr, 'KVNET_STORE_INVALID_KEY'), `list ${what}: ${String(listErr)}`);
      t.true(listErr!.message.includes(JSON.stringify(bad)), `list ${what}: the message names the value: ${listErr!.message}`);
      // a watch that accepted it would wait or fail otherwise; the time limit ends it without an error
      const watchErr = await t.throwsAsync(async () => {
        for await (const _ of store.watch('net', '1', { startsWith: bad, signal: AbortSignal.timeout(5_000) })) break;
      });
      t.true(hasCode(watchErr, 'KVNET_STORE_INVALID_KEY'), `watch ${what}: ${String(watchErr)}`);
      t.true(watchErr!.message.includes(JSON.stringify(bad)), `watch ${what}: the message names the value: ${watchErr!.message}`);
      const mirrorErr = t.throws(() => new PrefixMirror(store, 'net', { startsWith: bad }));
      t.true(hasCode(mirrorErr, 'KVNET_STORE_INVALID_KEY'), `mirror ${what}: ${String(mirrorErr)}`);
    }
  });

  test('close() leaves nothing that keeps the process alive', async (t) => {
    const { url } = await fresh(t);
    const child = runClient([url, 'close-and-exit', 'closing']);
    const timer = setTimeout(() => process.kill(child.pid, 'SIGKILL'), 20_000);
    const result = await child.done;
    clearTimeout(timer);
    t.is(result.code, 0, `the process must exit by itself after close(): ${result.stderr.slice(-1500)}`);
    t.deepEqual(result.lines, [{ closed: true }]);
  });
}
