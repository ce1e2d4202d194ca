/**
 * The ZooKeeper backend against a real ZooKeeper 3.8 (tickTime 500 ms, sessions 1–60 s): the
 * compliance suite, then what is specific to ZooKeeper (session expiry while the server is frozen,
 * ephemeral re-binding, implicit parents, digest ACLs), and faults of the link (a silent connection, a
 * reply cut off mid-frame) through a TCP proxy in front of the real server.
 */

import test from 'ava';
import * as zk from 'node-zookeeper-client';
import { runServerComplianceSuite } from './compliance.ts';
import { msUntilGone, storesClosedAfter, useKvServer } from './fixtures/harness.ts';
import { decodeText, encodeText, hasCode, openStore, parseStoreUrl, type KVStore, type WatchBatch } from '../src/index.ts';
import { openZookeeperStore } from '../src/zookeeper-store.ts';
import { ZK, ZkError, ZkSession } from '../src/zookeeper-session.ts';
import { startFaultProxy, type FaultProxy } from './fixtures/fault-proxy.ts';

const server = useKvServer(test, 'zookeeper');
test.afterEach.always((t) => {
  if (!t.passed) t.log(`ZooKeeper log (tail):\n${server.log().split('\n').slice(-40).join('\n')}`);
});

runServerComplianceSuite(test, server);

// ---- ZooKeeper specifics ----

const text = (s: string): Uint8Array => encodeText(s);
const opened = storesClosedAfter(test);
let n = 0;
const label = (what: string): string => `kvnet-test/zk${++n}-${what}`;
const open = async (what: string, options: Parameters<typeof openStore>[1] = {}): Promise<KVStore> => {
  const store = await openStore(server.url(label(what)), options);
  opened.push(store);
  return store;
};

/** A raw node-zookeeper-client session, to look at znodes the way ZooKeeper stores them. */
async function rawClient(auth?: string): Promise<zk.Client> {
  const client = zk.createClient(`127.0.0.1:${server.port}`, { sessionTimeout: 5000 });
  if (auth) client.addAuthInfo('digest', Buffer.from(auth));
  const connected = new Promise<void>((resolve) => client.once('connected', () => resolve()));
  client.connect();
  await connected;
  return client;
}

function rawGet(client: zk.Client, path: string): Promise<{ data: Buffer | undefined; stat: zk.Stat } | { code: number }> {
  return new Promise((resolve) =>
    client.getData(path, (err, data, stat) => resolve(err ? { code: (err as zk.Exception).code } : { data, stat })),
  );
}

test.serial('a frozen server past the session timeout: the watch resets, the lease is lost, the store works again', async (t) => {
  const url = server.url(label('frozen'));
  // A short session so the test does not wait the default 10 s.
  const store = await openZookeeperStore(parseStoreUrl(url), { timeoutMs: 1_500, sessionTimeoutMs: 2_000 });
  opened.push(store);
  await store.put('f/before', text('1'));
  const listing = await store.list('f');
  const lease = await store.grantLease(2);
  await store.put('f/eph', text('e'), { lease });
  const events: string[] = [];
  const watching = (async () => {
    try {
      for await (const batch of store.watch('f', listing.revision)) {
        for (const e of batch.events) events.push(`${e.type}:${e.key}`);
      }
      return new Error('the watch ended without an error');
    } catch (err) {
      return err;
    }
  })();
  await new Promise((r) => setTimeout(r, 500));
  t.deepEqual(events, ['put:f/eph']);
  const frozenAt = Date.now();
  server.pause();
  let lostAfter = -1;
  void lease.lost.then(() => (lostAfter = Date.now() - frozenAt));
  try {
    const err = await Promise.race([watching, new Promise((r) => setTimeout(() => r('still watching'), 15_000))]);
    t.true(hasCode(err, 'KVNET_STORE_WATCH_RESET'), `the watch must ask for a re-list: ${String(err)}`);
    t.is(await Promise.race([lease.lost, new Promise((r) => setTimeout(() => r('not lost'), 10_000))]), 'expired');
    t.log(`watch reset and lease lost ${lostAfter} ms into the freeze (session timeout 2000 ms)`);
    const during = await t.throwsAsync(store.get('f/before'));
    t.true(hasCode(during, 'KVNET_STORE_UNAVAILABLE'), String(during));
  } finally {
    server.resume();
  }
  // The same store object works again, with a new session.
  let value: string | undefined;
  for (let i = 0; i < 40 && value === undefined; i++) {
    try {
      value = decodeText((await store.get('f/before'))!.value);
    } catch {
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  t.is(value, '1');
  // The lost lease's key goes with its session (at once if the server still knew it, else by timeout).
  let eph = await store.get('f/eph');
  for (let i = 0; i < 60 && eph; i++) {
    await new Promise((r) => setTimeout(r, 100));
    eph = await store.get('f/eph');
  }
  t.is(eph, undefined, 'the key of the lost lease is gone');
  await t.throwsAsync(store.put('f/again', text('x'), { lease }), { code: 'KVNET_STORE_LEASE_LOST' });
  const fresh = await store.grantLease(2);
  await store.put('f/eph', text('again'), { lease: fresh });
  t.is(decodeText((await store.get('f/eph'))!.value), 'again');
  const relisted = await store.list('f');
  t.deepEqual(
    relisted.entries.map((e) => e.key),
    ['f/before', 'f/eph'],
  );
  await fresh.revoke();
});

test.serial('a watch resumes across a server restart shorter than the session timeout, without a re-list', async (t) => {
  // Sessions survive a ZooKeeper restart; the client re-arms its watches with the last zxid it saw,
  // and the server fires those whose znodes changed meanwhile. The session gets the longest timeout
  // the test server allows: a restart on a heavily loaded machine can take a while.
  const store = await openZookeeperStore(parseStoreUrl(server.url(label('resume'))), { timeoutMs: 2_000, sessionTimeoutMs: 60_000 });
  opened.push(store);
  await store.put('s/a', text('1'));
  const listing = await store.list('s');
  const seen = new Map<string, string>();
  const controller = new AbortController();
  let failure: unknown;
  const watching = (async () => {
    try {
      for await (const batch of store.watch('s', listing.revision, { signal: controller.signal })) {
        for (const e of batch.events) {
          if (e.type === 'put') seen.set(e.key, decodeText(e.value));
          else seen.delete(e.key);
        }
      }
    } catch (err) {
      failure = err;
    }
  })();
  await store.put('s/b', text('2'));
  await server.stop();
  await server.start();
  for (let i = 0; ; i++) {
    try {
      await store.put('s/c', text('3'));
      break;
    } catch (err) {
      if (i > 40) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  await store.delete('s/a');
  const until = Date.now() + 15_000;
  while (Date.now() < until && !(seen.get('s/c') === '3' && !seen.has('s/a'))) await new Promise((r) => setTimeout(r, 100));
  controller.abort();
  await watching;
  t.is(failure, undefined, `the watch went on without a reset: ${String(failure)}`);
  t.deepEqual([...seen].sort(), [
    ['s/b', '2'],
    ['s/c', '3'],
  ]);
});

test('lease TTLs are clamped by the server and the negotiated value is reported', async (t) => {
  const store = await open('lease-clamp');
  // The test server allows sessions of 1 s to 60 s.
  const short = await store.grantLease(0.2);
  const long = await store.grantLease(600);
  t.is(short.ttlMs, 1_000);
  t.is(long.ttlMs, 60_000);
  t.true(short.expiryGraceMs > 0 && short.expiryGraceMs <= short.ttlMs);
  t.not(short.id, long.id);
  await store.put('c/k', text('v'), { lease: short });
  t.is((await store.get('c/k'))?.leaseId, short.id);
  await short.release();
  t.is(await short.lost, 'released');
  const released = Date.now();
  const goneAfter = await msUntilGone(store, 'c/k', released, short.ttlMs + short.expiryGraceMs + 5_000, 50);
  t.log(`released lease with ttl ${short.ttlMs} ms: key gone after ${goneAfter} ms (grace ${short.expiryGraceMs} ms)`);
  t.true(goneAfter >= 0);
  await long.revoke();
  t.is(await long.lost, 'revoked');
});

test('concurrent writers: puts arrive in zxid order across batches and the watch ends in the listed state', async (t) => {
  const store = await open('storm');
  const writers = await Promise.all([0, 1, 2].map(async () => {
    const w = await openStore(store.url);
    opened.push(w);
    return w;
  }));
  await store.put('st/seed', text('s'));
  const listing = await store.list('st');
  const state = new Map(listing.entries.map((e) => [e.key, e.revision]));
  const putOrders: bigint[] = [];
  let batches = 0;
  const controller = new AbortController();
  let failure: unknown;
  const watching = (async () => {
    try {
      for await (const batch of store.watch('st', listing.revision, { signal: controller.signal })) {
        batches++;
        for (const e of batch.events) {
          if (e.type === 'put') {
            // Backend-specific: a ZooKeeper revision is "<mzxid hex>.<version>".
            putOrders.push(BigInt(`0x${e.revision.split('.')[0]}`));
            state.set(e.key, e.revision);
          } else {
            state.delete(e.key);
          }
        }
      }
    } catch (err) {
      failure = err;
    }
  })();
  await Promise.all(
    writers.map(async (w, i) => {
      for (let j = 0; j < 150; j++) {
        const key = `st/k${(j * 7 + i * 13) % 40}`;
        if (j % 5 === 4) await w.delete(key);
        else await w.put(key, text(`${i}-${j}`));
      }
    }),
  );
  const final = await store.list('st');
  const expected = new Map(final.entries.map((e) => [e.key, e.revision]));
  const until = Date.now() + 20_000;
  while (Date.now() < until && JSON.stringify([...state].sort()) !== JSON.stringify([...expected].sort())) {
    await new Promise((r) => setTimeout(r, 100));
  }
  controller.abort();
  await watching;
  t.is(failure, undefined, String(failure));
  t.log(`${putOrders.length} put events in ${batches} batches for 450 writes`);
  t.deepEqual([...state].sort(), [...expected].sort());
  t.true(
    putOrders.every((o, i) => i === 0 || putOrders[i - 1]! < o),
    'put events arrive in strictly increasing mzxid order, also across batches',
  );
});

test('re-binding a key to another lease is one put for watchers, never a delete', async (t) => {
  const store = await open('rebind');
  const first = await store.grantLease(5);
  const second = await store.grantLease(5);
  await store.put('r/k', text('one'), { lease: first });
  const listing = await store.list('r');
  t.is(listing.entries[0]?.leaseId, first.id);
  const batches: WatchBatch[] = [];
  const controller = new AbortController();
  const watching = (async () => {
    for await (const b of store.watch('r', listing.revision, { signal: controller.signal })) {
      batches.push(b);
      if (b.events.some((e) => e.type === 'put' && decodeText(e.value) === 'plain')) break;
    }
  })();
  const rev2 = await store.put('r/k', text('two'), { lease: second });
  t.is((await store.get('r/k'))?.leaseId, second.id);
  t.is((await store.get('r/k'))?.revision, rev2);
  // The first lease going away must not take the re-bound key with it.
  await first.revoke();
  t.is(decodeText((await store.get('r/k'))!.value), 'two');
  // A put without a lease makes the key persistent again.
  await store.put('r/k', text('plain'));
  t.is((await store.get('r/k'))?.leaseId, undefined);
  await second.revoke();
  await watching;
  controller.abort();
  const events = batches.flatMap((b) => b.events);
  t.false(events.some((e) => e.type === 'delete'), `no delete: ${JSON.stringify(events.map((e) => e.type + ':' + e.key))}`);
  const last = events.at(-1);
  t.is(last?.type === 'put' ? decodeText(last.value) : undefined, 'plain');
  t.truthy(await store.get('r/k'), 'a persistent key outlives the lease it was once bound to');
});

test('ephemeral znodes cannot have children: both directions are refused with a clear error', async (t) => {
  const store = await open('ephemeral-children');
  const lease = await store.grantLease(5);
  await store.put('e/parent', text('p'), { lease });
  const below = await t.throwsAsync(store.put('e/parent/child', text('c')));
  t.true(hasCode(below, 'KVNET_STORE_INVALID_KEY'), String(below));
  t.regex(below!.message, /bound to a lease/);
  await store.put('e/dir/child', text('c'));
  const above = await t.throwsAsync(store.put('e/dir', text('d'), { lease }));
  t.true(hasCode(above, 'KVNET_STORE_INVALID_KEY'), String(above));
  t.regex(above!.message, /keys below it/);
  // Without a lease both are fine: a znode can be a key and a parent at once.
  await store.put('e/dir', text('d'));
  t.deepEqual(
    (await store.list('e')).entries.map((e) => e.key),
    ['e/dir', 'e/dir/child', 'e/parent'],
  );
  await lease.revoke();
});

test('implicit parents are never listed as keys, and are kept as empty znodes', async (t) => {
  const url = server.url(label('implicit'));
  const store = await openStore(url);
  opened.push(store);
  await store.put('deep/a/b/c/leaf', text('x'));
  await store.put('deep/a/other', text('y'));
  t.deepEqual(
    (await store.list('deep')).entries.map((e) => e.key),
    ['deep/a/b/c/leaf', 'deep/a/other'],
  );
  t.deepEqual((await store.list('deep/a/b')).entries.map((e) => e.key), ['deep/a/b/c/leaf']);
  t.is(await store.get('deep/a/b'), undefined, 'an implicit parent is not a key');
  t.false(await store.delete('deep/a/b'), 'deleting an implicit parent deletes nothing');
  // A key with keys below it can be deleted: its znode becomes an implicit parent again.
  await store.put('deep/a', text('both'));
  t.true(await store.delete('deep/a'));
  t.is(await store.get('deep/a'), undefined);
  t.deepEqual(
    (await store.list('')).entries.map((e) => e.key),
    ['deep/a/b/c/leaf', 'deep/a/other'],
  );
  // What ZooKeeper holds: marker byte + value for keys, empty data for implicit parents.
  const raw = await rawClient();
  try {
    const prefix = `/${parseStoreUrl(url).prefix}`;
    const parent = await rawGet(raw, `${prefix}/deep/a/b`);
    t.true('data' in parent && (parent.data === undefined || parent.data.length === 0));
    const leaf = await rawGet(raw, `${prefix}/deep/a/b/c/leaf`);
    t.true('data' in leaf && leaf.data !== undefined && leaf.data[0] === 0x01 && leaf.data.subarray(1).toString() === 'x');
    await store.delete('deep/a/b/c/leaf');
    const left = await rawGet(raw, `${prefix}/deep/a/b/c`);
    t.true('stat' in left, 'empty implicit parents are left behind');
    t.deepEqual((await store.list('deep/a/b')).entries, []);
  } finally {
    raw.close();
  }
});

test('a transaction deletes a missing key as a no-op, and its checks guard against concurrent creates', async (t) => {
  const store = await open('txn-missing');
  const r = await store.txn([
    { op: 'delete', key: 'm/never' },
    { op: 'delete', key: 'm/deep/never/there' },
    { op: 'check', key: 'm/absent', if: { absent: true } },
    { op: 'put', key: 'm/x', value: text('x') },
  ]);
  t.true(r.ok);
  t.deepEqual((await store.list('m')).entries.map((e) => e.key), ['m/x']);
  // Conditions and guards: CAS loops from two stores on one counter via txn.
  const key = 'm/counter';
  await store.put(key, text('0'));
  const bump = async (s: KVStore, times: number): Promise<void> => {
    for (let done = 0; done < times; ) {
      const cur = (await s.get(key))!;
      const res = await s.txn([
        { op: 'check', key: 'm/absent', if: { absent: true } },
        { op: 'put', key, value: text(String(Number(decodeText(cur.value)) + 1)), if: { revision: cur.revision } },
      ]);
      if (res.ok) done++;
    }
  };
  const twin = await openStore(store.url);
  opened.push(twin);
  await Promise.all([bump(store, 40), bump(twin, 40)]);
  t.is(decodeText((await store.get(key))!.value), '80');
  const dup = await t.throwsAsync(store.txn([{ op: 'put', key: 'm/d', value: text('1') }, { op: 'delete', key: 'm/d' }]));
  t.true(hasCode(dup, 'KVNET_STORE_INVALID_KEY'));
});

test('values above the limit are refused before anything is sent', async (t) => {
  const store = await openStore('zk://127.0.0.1:9/kvnet-dead', { timeoutMs: 1_000 });
  opened.push(store);
  const limit = store.capabilities.maxValueBytes;
  t.true(limit < 1024 * 1024, 'below the default jute.maxbuffer');
  const err = await t.throwsAsync(store.put('big', new Uint8Array(limit + 1)));
  t.true(hasCode(err, 'KVNET_STORE_VALUE_TOO_LARGE'), String(err));
  const txnErr = await t.throwsAsync(
    store.txn([
      { op: 'put', key: 'a', value: new Uint8Array(limit / 2 + 1) },
      { op: 'put', key: 'b', value: new Uint8Array(limit / 2 + 1) },
    ]),
  );
  t.true(hasCode(txnErr, 'KVNET_STORE_VALUE_TOO_LARGE'), String(txnErr));
});

test('digest auth: the right credentials read and write, none are refused with a clear error', async (t) => {
  const url = server.url(label('auth'));
  const withAuth = url.replace('zk://', 'zk://kvnet:s3cret@');
  const owner = await openStore(withAuth);
  opened.push(owner);
  t.false(owner.url.includes('s3cret'), 'the password is not in the URL the store shows');
  await owner.put('secret/k', text('v'));
  t.is(decodeText((await owner.get('secret/k'))!.value), 'v');
  // The same credentials from options instead of the URL.
  const colleague = await openStore(url, { auth: { username: 'kvnet', password: 's3cret' } });
  opened.push(colleague);
  t.is(decodeText((await colleague.get('secret/k'))!.value), 'v');
  await colleague.put('secret/k2', text('w'));
  t.deepEqual((await owner.list('secret')).entries.map((e) => e.key), ['secret/k', 'secret/k2']);

  const stranger = await openStore(url);
  opened.push(stranger);
  for (const [what, call] of [
    ['get', () => stranger.get('secret/k')],
    ['put', () => stranger.put('secret/k', text('mine'))],
    ['list', () => stranger.list('secret')],
  ] as const) {
    const err = await t.throwsAsync(call(), undefined, what);
    t.true(hasCode(err, 'KVNET_STORE_INVALID_URL'), `${what}: ${String(err)}`);
    t.regex(err!.message, /denied access/, what);
  }
  const wrong = await openStore(url.replace('zk://', 'zk://kvnet:wrong@'));
  opened.push(wrong);
  const err = await t.throwsAsync(wrong.get('secret/k'));
  t.true(hasCode(err, 'KVNET_STORE_INVALID_URL'), String(err));
  t.is(decodeText((await owner.get('secret/k'))!.value), 'v', 'nothing was changed by the refused clients');
  // ZooKeeper holds the znodes with a creator-only ACL (reading an ACL needs READ since 3.6).
  const raw = await rawClient('kvnet:s3cret');
  try {
    const acl = await new Promise<zk.ACL[]>((resolve, reject) =>
      raw.getACL(`/${parseStoreUrl(url).prefix}/secret/k`, (e, acls) => (e ? reject(e) : resolve(acls))),
    );
    t.is(acl.length, 1);
    t.is(acl[0]!.id.scheme, 'digest');
  } finally {
    raw.close();
  }
});

// ---- faults of the link, with a proxy in front of the real server ----

async function sessionVia(proxy: FaultProxy, sessionTimeoutMs: number): Promise<ZkSession> {
  const session = new ZkSession({ servers: [{ host: '127.0.0.1', port: proxy.port }], sessionTimeoutMs, role: 'test' });
  session.start();
  return session;
}

function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  return Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))]);
}

test('a server that takes the connection and never answers the handshake: the session drops it, tries again, and connects once answers come', async (t) => {
  const proxy = await startFaultProxy({ host: '127.0.0.1', port: server.port }, 'silent');
  const session = await sessionVia(proxy, 2_000);
  try {
    // HANDSHAKE_FRACTION of the 2 s requested timeout: each silent connection is given up after 1 s.
    await new Promise((r) => setTimeout(r, 2_600));
    t.true(proxy.accepted >= 2, `the session tried again instead of waiting on the silent connection (${proxy.accepted} connections)`);
    t.false(session.isConnected);
    proxy.mode = 'pass';
    await within(10_000, 'connecting once the server answers', session.ready());
    t.true(session.isConnected);
    t.truthy(await session.exists('/'));
  } finally {
    await session.close('graceful', 'closed');
    await proxy.close();
  }
});

test('a reply cut off mid-frame: the session reconnects within itself and the next replies parse', async (t) => {
  const proxy = await startFaultProxy({ host: '127.0.0.1', port: server.port });
  const session = await sessionVia(proxy, 10_000);
  const path = `/${label('cut').replace(/\//g, '-')}`;
  const value = Buffer.alloc(400_000, 7);
  try {
    await within(10_000, 'connecting', session.ready());
    const id = session.id;
    const created = await session.multi([{ op: 'create', path, data: value, ephemeral: false }]);
    t.true(created.ok);
    const cut = proxy.cutNextReply(10_000);
    const first = await t.throwsAsync(within(10_000, 'the cut read', session.getData(path)));
    await cut;
    t.true(first instanceof ZkError && first.code === ZK.CONNECTION_LOSS, String(first));
    const again = await within(10_000, 'the read after the reconnect', session.getData(path));
    t.true(again !== undefined && again.data.equals(value), 'the whole value read back');
    t.is(session.id, id, 'the same session');
    t.false(session.isEnded);
    t.true(proxy.accepted >= 2, 'over a new connection');
  } finally {
    await session.close('graceful', 'closed');
    await proxy.close();
  }
});
