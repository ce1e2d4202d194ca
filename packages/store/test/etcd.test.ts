import test, { type ExecutionContext } from 'ava';
import { Etcd3 } from 'etcd3';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { runServerComplianceSuite } from './compliance.ts';
import { collect, storesClosedAfter, useKvServer } from './fixtures/harness.ts';
import { makeTestPki, type TestPki } from './fixtures/tls-ca.ts';
import { startServer, type KvServer } from '../../../test/support/kv-servers.ts';
import { waitFor } from '../../../test/support/process.ts';
import { decodeText, encodeText, hasCode, openStore, type KVStore, type StoreOptions, type WatchEvent } from '../src/index.ts';

const server = useKvServer(test, 'etcd');
runServerComplianceSuite(test, server);

// ---- etcd-specific behaviour ----

const text = (s: string): Uint8Array => encodeText(s);
const opened = storesClosedAfter(test);

let n = 0;
async function fresh(t: ExecutionContext, options?: StoreOptions): Promise<KVStore> {
  const store = await openStore(server.url(`kvnet-etcd/e${++n}-${t.title.replace(/[^a-z0-9]+/gi, '-').slice(0, 30)}`), options);
  opened.push(store);
  return store;
}

/** A raw etcd3 client on the test server, for what the store does not offer (compaction, auth setup). */
function rawClient(s: KvServer = server): Etcd3 {
  return new Etcd3({ hosts: `http://${s.host}:${s.port}` });
}

/** A TCP forwarder in front of the server that can swallow the server's answers and cut connections. */
class TcpProxy {
  /** While true, bytes from the server are dropped (requests still reach it). */
  swallowAnswers = false;
  /** Where new connections go; change it to send clients to another server. */
  target: { host: string; port: number };
  private readonly sockets = new Set<Socket>();
  private readonly server: Server;

  private constructor(host: string, port: number) {
    this.target = { host, port };
    this.server = createServer((client) => {
      const upstream = connect(this.target);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d) => {
        if (!this.swallowAnswers) client.write(d);
      });
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }

  static async start(host: string, port: number): Promise<TcpProxy> {
    const proxy = new TcpProxy(host, port);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as { port: number }).port;
  }

  /** Destroys every connection through the proxy (clients see a reset). */
  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

// Everything here runs serially, before the suite's concurrent phase: some tests stop, pause or
// compact the shared server, and the rest would only add to the load of that phase.

test.serial('a watch that needs compacted history is reset, naming the compaction', async (t) => {
  const store = await fresh(t);
  await store.put('c/seed', text('s'));
  const listing = await store.list('c');
  for (let i = 0; i < 5; i++) await store.put(`c/k${i}`, text(String(i)));
  const raw = rawClient();
  try {
    const head = (await raw.kv.range({ key: Buffer.from('kvnet-etcd/'), count_only: true })).header.revision;
    await raw.kv.compact({ revision: head, physical: true });
  } finally {
    raw.close();
  }
  const { events, reset } = await collect(store, 'c', listing.revision, () => false, 30_000);
  t.deepEqual(events, [], 'nothing from the forgotten history');
  t.true(hasCode(reset, 'KVNET_STORE_WATCH_RESET'), String(reset));
  t.regex(String(reset), /compacted/);
  // the caller's recovery: list again and watch from there
  const again = await store.list('c');
  t.is(again.entries.length, 6);
  const watching = collect(store, 'c', again.revision, (evs) => evs.length >= 1, 30_000);
  await store.put('c/after', text('a'));
  const after = await watching;
  t.is(after.reset, undefined, String(after.reset));
  t.deepEqual(
    after.events.map((e) => e.key),
    ['c/after'],
  );
});

test.serial('a live watch resumes across a server restart without a gap', async (t) => {
  // A deadline long enough to ride out the restart, so the watch resumes instead of resetting.
  const store = await fresh(t, { timeoutMs: 30_000 });
  const listing = await store.list('r');
  const expected: string[] = [];
  let restarted = false;
  const watching = collect(
    store,
    'r',
    listing.revision,
    (evs) => new Set(evs.map((e) => e.key)).size >= 40,
    120_000,
    async () => {
      if (restarted) return;
      restarted = true;
      await server.stop();
      await server.start();
    },
  );
  for (let i = 0; i < 40; i++) {
    const key = `r/k${String(i).padStart(2, '0')}`;
    for (let tries = 0; ; tries++) {
      try {
        await store.put(key, text(key));
        break;
      } catch (err) {
        if (tries > 100) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    expected.push(key);
  }
  const { events, reset } = await watching;
  t.true(restarted);
  t.is(reset, undefined, `the watch must resume, not reset: ${String(reset)}`);
  // A put cut off by the restart may have committed before the test re-sent it, so compare with
  // etcd's own history: a fresh watch from the same revision, long after the restart.
  const last = events.at(-1)!.revision;
  const replay = await collect(store, 'r', listing.revision, (evs) => evs.some((e) => e.revision === last), 30_000);
  t.is(replay.reset, undefined, String(replay.reset));
  const view = (evs: WatchEvent[]): string[] => evs.map((e) => `${e.type}:${e.key}@${e.revision}`);
  const upToLast = replay.events.filter((e) => BigInt(e.revision) <= BigInt(last));
  t.deepEqual(view(events), view(upToLast), 'every change exactly once, in order, across the restart');
  t.deepEqual([...new Set(events.map((e) => e.key))], expected);
});

test.serial('a watch on a server that stops answering is reset instead of hanging', async (t) => {
  const store = await fresh(t, { timeoutMs: 1_500 });
  const listing = await store.list('p');
  await store.put('p/before', text('x'));
  let paused = false;
  const started = Date.now();
  try {
    const result = await collect(
      store,
      'p',
      listing.revision,
      () => false,
      90_000,
      () => {
        if (!paused) {
          paused = true;
          server.pause();
        }
      },
    );
    t.log(`watch ended ${Date.now() - started} ms after the pause with ${String(result.reset)}`);
    t.false(result.timedOut, 'the watch must not hang on a paused server');
    t.true(hasCode(result.reset, 'KVNET_STORE_WATCH_RESET'), String(result.reset));
  } finally {
    server.resume();
  }
});

test.serial('a lease on a server that stops answering is reported lost', async (t) => {
  const store = await fresh(t, { timeoutMs: 1_500 });
  const lease = await store.grantLease(2);
  await store.put('pl/k', text('x'), { lease });
  server.pause();
  try {
    const reason = await Promise.race([lease.lost, new Promise((r) => setTimeout(() => r('still alive after 60 s'), 60_000))]);
    t.is(reason, 'expired');
  } finally {
    server.resume();
  }
  const err = await t.throwsAsync(store.put('pl/k2', text('y'), { lease }));
  t.true(hasCode(err, 'KVNET_STORE_LEASE_LOST'), String(err));
});

test.serial('a store opens without contacting the server; an unreachable one fails with a typed error naming URL and cause', async (t) => {
  const timeoutMs = 1_500;
  const started = Date.now();
  const store = await openStore('etcd://127.0.0.1:9/kvnet-dead', { timeoutMs });
  opened.push(store);
  t.true(Date.now() - started < 1_000, 'openStore does not wait for the server');
  for (const call of [() => store.get('k'), () => store.put('k', text('v')), () => store.grantLease(5), () => store.list('')]) {
    const began = Date.now();
    const err = await t.throwsAsync(call());
    t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), String(err));
    t.true(err!.message.includes('etcd://127.0.0.1:9/kvnet-dead'), err!.message);
    t.regex(err!.message, /ECONNREFUSED|No connection established|no answer/);
    t.true(Date.now() - began < timeoutMs + 3_000, `failed after ${Date.now() - began} ms`);
  }
  const watchErr = await collect(store, 'x', '1', () => false, 30_000);
  t.true(hasCode(watchErr.reset, 'KVNET_STORE_WATCH_RESET'), String(watchErr.reset));
});

test.serial('a conditional write whose answer is lost fails as unavailable, never as a lost race', async (t) => {
  const proxy = await TcpProxy.start(server.host, server.port);
  t.teardown(() => proxy.close());
  const label = `kvnet-etcd/lost-answer-${++n}`;
  const store = await openStore(`etcd://127.0.0.1:${proxy.port}/${label}`, { timeoutMs: 5_000 });
  opened.push(store);
  const direct = await openStore(server.url(label));
  opened.push(direct);
  const r0 = await store.put('k', text('v0'));
  // The request reaches etcd and commits; its answer is dropped, then the connection is cut.
  proxy.swallowAnswers = true;
  const pending = store.putIf('k', text('mine'), { revision: r0 }).then(
    (result) => result as unknown,
    (err: unknown) => err,
  );
  await waitFor('the write to commit', async () => decodeText((await direct.get('k'))!.value) === 'mine', 30_000);
  proxy.cut();
  proxy.swallowAnswers = false;
  const outcome = await pending;
  t.true(hasCode(outcome, 'KVNET_STORE_UNAVAILABLE'), `a committed CAS must not be reported as lost: ${JSON.stringify(outcome)}`);
  // the same client works again once the connection is back
  const cur = (await store.get('k'))!;
  t.true((await store.putIf('k', text('next'), { revision: cur.revision })).ok);
});

test.serial('a watch resumes without a gap when its connection is cut, also while catching up', async (t) => {
  const proxy = await TcpProxy.start(server.host, server.port);
  t.teardown(() => proxy.close());
  const label = `kvnet-etcd/cut-${++n}`;
  const store = await openStore(`etcd://127.0.0.1:${proxy.port}/${label}`, { timeoutMs: 10_000 });
  opened.push(store);
  const writer = await openStore(server.url(label));
  opened.push(writer);
  const listing = await writer.list('w');
  // 2500 revisions of history: etcd replays at most 1000 revisions per response, and while it
  // catches up the response header already carries the newest revision.
  const keys = Array.from({ length: 2_500 }, (_, i) => `w/k${String(i).padStart(4, '0')}`);
  for (let i = 0; i < keys.length; i += 100) await Promise.all(keys.slice(i, i + 100).map((k) => writer.put(k, text(k))));
  let cuts = 0;
  const { events, reset } = await collect(store, 'w', listing.revision, (evs) => evs.length >= keys.length + 3, 120_000, async () => {
    if (cuts < 3) {
      cuts++;
      proxy.cut();
      await writer.put('w/live', text(String(cuts))); // and a change while it is disconnected
    }
  });
  t.is(cuts, 3);
  t.is(reset, undefined, String(reset));
  const replay = await collect(writer, 'w', listing.revision, (evs) => evs.length >= keys.length + 3, 60_000);
  const view = (evs: WatchEvent[]): string[] => evs.map((e) => `${e.type}:${e.key}@${e.revision}`);
  t.deepEqual(view(events), view(replay.events), 'the cut watch saw exactly what a fresh one sees');
  t.deepEqual([...new Set(events.map((e) => e.key))].sort(), [...keys, 'w/live'].sort());
});

test.serial('a watch whose server comes back with less history is reset, not left waiting', async (t) => {
  const proxy = await TcpProxy.start(server.host, server.port);
  t.teardown(() => proxy.close());
  const store = await openStore(`etcd://127.0.0.1:${proxy.port}/kvnet-etcd/restored-${++n}`, { timeoutMs: 5_000 });
  opened.push(store);
  const listing = await store.list('h');
  for (let i = 0; i < 5; i++) await store.put(`h/k${i}`, text(String(i)));
  const other = await startServer('etcd'); // a fresh cluster: its revisions start again at 1
  t.teardown(() => other.dispose());
  const { events, reset } = await collect(store, 'h', listing.revision, () => false, 60_000, (batch) => {
    if (batch.events.some((e) => e.key === 'h/k4')) {
      proxy.target = { host: other.host, port: other.port };
      proxy.cut();
    }
  });
  t.is(events.length, 5);
  t.true(hasCode(reset, 'KVNET_STORE_WATCH_RESET'), String(reset));
  t.regex(String(reset), /behind revision/);
});

test.serial('a listing larger than one page is complete and consistent with the watch that follows', async (t) => {
  const store = await fresh(t);
  const keys = Array.from({ length: 1_234 }, (_, i) => `many/k${String(i).padStart(5, '0')}`);
  for (let i = 0; i < keys.length; i += 100) {
    await store.txn(keys.slice(i, i + 100).map((key) => ({ op: 'put' as const, key, value: text(key) })));
  }
  // writes racing the listing land either in it or in the watch from its revision, never in neither
  let racing = true;
  const racer = (async () => {
    for (let i = 0; racing; i++) await store.put(`many/z${String(i).padStart(4, '0')}`, text('r'));
  })();
  const listing = await store.list('many');
  const watching = collect(store, 'many', listing.revision, (evs) => evs.some((e) => e.key === 'many/zz-last'), 60_000);
  racing = false;
  await racer;
  await store.put('many/zz-last', text('end'));
  const { events, reset } = await watching;
  t.is(reset, undefined, String(reset));
  const listed = listing.entries.map((e) => e.key);
  t.deepEqual(listed.slice(0, keys.length), keys);
  t.deepEqual(listed, [...listed].sort());
  const seen = new Set([...listed, ...events.map((e) => e.key)]);
  const all = (await store.list('many')).entries.map((e) => e.key);
  t.deepEqual(all.filter((k) => !seen.has(k)), [], 'every key is in the listing or the watch');
  t.deepEqual(events.filter((e) => listed.includes(e.key)), [], 'nothing in both');
});

test.serial('rebinding a key to another lease is a put to watchers, never a delete', async (t) => {
  const store = await fresh(t);
  const a = await store.grantLease(5);
  const b = await store.grantLease(5);
  const listing = await store.list('rb');
  const watching = collect(store, 'rb', listing.revision, (evs) => evs.some((e) => e.key === 'rb/end'), 30_000);
  await store.put('rb/k', text('a'), { lease: a });
  await store.put('rb/k', text('b'), { lease: b });
  await a.revoke();
  await store.put('rb/end', text('x'));
  const { events, reset } = await watching;
  t.is(reset, undefined, String(reset));
  t.deepEqual(
    events.map((e) => `${e.type}:${e.key}`),
    ['put:rb/k', 'put:rb/k', 'put:rb/end'],
  );
  const entry = (await store.get('rb/k'))!;
  t.is(decodeText(entry.value), 'b');
  t.is(entry.leaseId, b.id);
  await b.revoke();
  t.is(await store.get('rb/k'), undefined);
});

test.serial('a key cannot be bound to a revoked lease', async (t) => {
  const store = await fresh(t);
  const lease = await store.grantLease(5);
  await lease.revoke();
  const err = await t.throwsAsync(store.put('gone/k', text('x'), { lease }));
  t.true(hasCode(err, 'KVNET_STORE_LEASE_LOST'), String(err));
  // a lease ID etcd does not know (revoked by another client) is refused by the server the same way
  const other = await fresh(t);
  const foreign = await other.grantLease(5);
  const raw = rawClient();
  try {
    await raw.leaseClient.leaseRevoke({ ID: foreign.id });
  } finally {
    raw.close();
  }
  const err2 = await t.throwsAsync(store.put('gone/k', text('x'), { lease: foreign }));
  t.true(hasCode(err2, 'KVNET_STORE_LEASE_LOST'), String(err2));
  t.is(await other.get('gone/k'), undefined);
});

test.serial('a failed transaction names the key whose condition failed', async (t) => {
  const store = await fresh(t);
  const r = await store.put('ft/a', text('a'));
  await store.put('ft/b', text('b'));
  const res = await store.txn([
    { op: 'check', key: 'ft/a', if: { revision: r } },
    { op: 'put', key: 'ft/b', value: text('b2'), if: { absent: true } },
    { op: 'put', key: 'ft/c', value: text('c') },
  ]);
  t.deepEqual(res, { ok: false, failedKey: 'ft/b' });
  t.is(await store.get('ft/c'), undefined);
  // a revision that etcd never produced never matches, also for an absent key
  const bogus = await store.putIf('ft/none', text('x'), { revision: '0' });
  t.deepEqual(bogus, { ok: false, reason: 'missing' });
  t.is(await store.get('ft/none'), undefined);
});

test.serial('oversized values and transactions are refused before anything is sent', async (t) => {
  const store = await openStore('etcd://127.0.0.1:9/kvnet-dead', { timeoutMs: 1_500 });
  opened.push(store);
  const limit = store.capabilities.maxValueBytes;
  t.true(limit < 1_572_864, 'below etcd’s 1.5 MiB request limit');
  const tooBig = new Uint8Array(limit + 1);
  for (const call of [
    () => store.put('v', tooBig),
    () => store.putIf('v', tooBig, { absent: true }),
    () => store.txn([{ op: 'put', key: 'v', value: tooBig }]),
  ]) {
    const err = await t.throwsAsync(call());
    t.true(hasCode(err, 'KVNET_STORE_VALUE_TOO_LARGE'), String(err));
  }
  const many = Array.from({ length: store.capabilities.maxTxnOps + 1 }, (_, i) => ({ op: 'put' as const, key: `t/${i}`, value: text('x') }));
  t.true(hasCode(await t.throwsAsync(store.txn(many)), 'KVNET_STORE_TXN_TOO_LARGE'));
  const heavy = Array.from({ length: 3 }, (_, i) => ({ op: 'put' as const, key: `t/${i}`, value: new Uint8Array(limit) }));
  t.true(hasCode(await t.throwsAsync(store.txn(heavy)), 'KVNET_STORE_TXN_TOO_LARGE'));
  const twice = await t.throwsAsync(
    store.txn([
      { op: 'put', key: 't/x', value: text('1') },
      { op: 'delete', key: 't/x' },
    ]),
  );
  t.true(hasCode(twice, 'KVNET_STORE_INVALID_KEY'), String(twice));
  // a value exactly at the limit goes through on a real server
  const real = await fresh(t);
  const atLimit = new Uint8Array(limit).fill(7);
  await real.put('v', atLimit);
  t.is((await real.get('v'))!.value.length, limit);
});

test.serial('with several members listed, a dead one is skipped', async (t) => {
  const store = await openStore(`etcd://127.0.0.1:9,${server.host}:${server.port}/kvnet-etcd/multi-${++n}`, { timeoutMs: 5_000 });
  opened.push(store);
  const listing = await store.list('m');
  const watching = collect(store, 'm', listing.revision, (evs) => evs.length >= 20, 60_000);
  for (let i = 0; i < 20; i++) {
    const r = await store.putIf(`m/k${i}`, text(String(i)), { absent: true });
    t.true(r.ok);
    t.is(decodeText((await store.get(`m/k${i}`))!.value), String(i));
  }
  const { events, reset } = await watching;
  t.is(reset, undefined, String(reset));
  t.is(events.length, 20);
});

test.serial('user and password from the URL authenticate; wrong ones fail with a clear error', async (t) => {
  const authServer = await startServer('etcd');
  t.teardown(() => authServer.dispose());
  const raw = rawClient(authServer);
  try {
    await raw.user('root').create('root-secret');
    await raw.user('root').addRole('root');
    await raw.auth.authEnable();
  } finally {
    raw.close();
  }
  const good = await openStore(`etcd://root:root-secret@${authServer.host}:${authServer.port}/kvnet-auth`, { timeoutMs: 3_000 });
  opened.push(good);
  t.false(good.url.includes('root-secret'), 'the password is not in the store URL');
  await good.put('k', text('v'));
  t.is(decodeText((await good.get('k'))!.value), 'v');
  const viaOptions = await openStore(`etcd://${authServer.host}:${authServer.port}/kvnet-auth`, {
    timeoutMs: 3_000,
    auth: { username: 'root', password: 'root-secret' },
  });
  opened.push(viaOptions);
  t.is(decodeText((await viaOptions.get('k'))!.value), 'v');

  for (const url of [
    `etcd://root:wrong@${authServer.host}:${authServer.port}/kvnet-auth`,
    `etcd://${authServer.host}:${authServer.port}/kvnet-auth`,
  ]) {
    const bad = await openStore(url, { timeoutMs: 3_000 });
    opened.push(bad);
    const err = await t.throwsAsync(bad.get('k'));
    t.log(err!.message);
    t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), String(err));
    t.false(err!.message.includes('wrong'), 'no password in the message');
  }
});

test.serial('TLS with client certificates: the right certificates work; a missing client certificate or an untrusted server fail clearly', async (t) => {
  const pki: TestPki = await makeTestPki();
  const tlsServer = await startServer('etcd', { tls: { caFile: pki.caFile, certFile: pki.serverCertFile, keyFile: pki.serverKeyFile } });
  t.teardown(() => tlsServer.dispose());
  const url = tlsServer.url('kvnet-tls');
  const timeoutMs = 3_000;

  const good = await openStore(url, { timeoutMs, tls: { caFile: pki.caFile, certFile: pki.clientCertFile, keyFile: pki.clientKeyFile } });
  opened.push(good);
  const listing = await good.list('t');
  const watching = collect(good, 't', listing.revision, (evs) => evs.length >= 2, 30_000);
  await good.put('t/a', text('secure'));
  await good.delete('t/a');
  t.is(await good.get('t/a'), undefined);
  const { events, reset } = await watching;
  t.is(reset, undefined, String(reset));
  t.deepEqual(
    events.map((e) => e.type),
    ['put', 'delete'],
  );

  const cases: Array<[string, StoreOptions['tls'], RegExp]> = [
    ['no client certificate', { caFile: pki.caFile }, /refused the client certificate/],
    ['server CA not trusted', { caFile: pki.otherCaFile, certFile: pki.clientCertFile, keyFile: pki.clientKeyFile }, /certificate is not trusted/],
    ['plain http to a TLS server', undefined, /No connection established/],
  ];
  for (const [what, tls, explains] of cases) {
    const bad = await openStore(url, { timeoutMs, ...(tls ? { tls } : {}) });
    opened.push(bad);
    const began = Date.now();
    const err = await t.throwsAsync(bad.put('t/b', text('x')), undefined, what);
    const took = Date.now() - began;
    t.log(`${what}: ${err?.message} (${took} ms)`);
    t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), `${what}: ${String(err)}`);
    t.true(err!.message.includes(url), err!.message);
    t.regex(err!.message, explains);
    t.true(took < timeoutMs + 3_000, `${what}: failed after ${took} ms`);
  }
  t.is(await good.get('t/b'), undefined, 'nothing was written by the refused clients');

  const missing = await t.throwsAsync(openStore(url, { tls: { caFile: `${pki.dir}/nope.crt` } }));
  t.true(hasCode(missing, 'KVNET_STORE_INVALID_URL'), String(missing));
});
