import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createServer, connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { runServerComplianceSuite } from './compliance.ts';
import { storesClosedAfter, useKvServer } from './fixtures/harness.ts';
import { makeTestPki } from './fixtures/tls-ca.ts';
import { consulBinary } from '../../../test/support/kv-servers.ts';
import {
  freePort,
  makeTempDir,
  removeTempDir,
  startProcess,
  waitFor,
  waitForPort,
  type ManagedProcess,
} from '../../../test/support/process.ts';
import {
  decodeText,
  encodeText,
  hasCode,
  openStore,
  type KVStore,
  type StoreOptions,
  type WatchEvent,
} from '../src/index.ts';
import { MAX_TXN_OPS, MAX_VALUE_BYTES, parseGoDurationMs, sessionTtlBounds } from '../src/consul-store.ts';
import { LIVENESS_INTERVAL_MS } from '../src/consul-client.ts';

const text = (s: string): Uint8Array => encodeText(s);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// The plain server (for the suite and most tests) and the secured one below start concurrently:
// ava runs a file's non-serial before hooks at the same time.
const server = useKvServer(test, 'consul');
let secured: SecuredConsul;
test.before(async () => {
  secured = await startSecuredConsul();
});
test.after.always(async () => {
  await secured?.dispose();
});

runServerComplianceSuite(test, server);

// ---- a second Consul, the way production runs it: HTTPS with client certificates, ACLs that deny
// by default, the default session_ttl_min (10 s). kv-servers.ts starts plain single-node servers
// only, so this launcher lives here.

interface SecuredConsul {
  readonly port: number;
  readonly managementToken: string;
  readonly tls: { caFile: string; certFile: string; keyFile: string };
  /** A CA that did not sign the server's certificate. */
  readonly otherCaFile: string;
  url(prefix: string): string;
  /** Options with TLS and the management token. */
  options(extra?: StoreOptions): StoreOptions;
  /** Calls the HTTP API with the management token (policies, tokens). */
  api(method: string, path: string, body?: unknown): Promise<unknown>;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Deletes the data directory (between stop and start): the server comes back empty. */
  wipe(): void;
  dispose(): Promise<void>;
}

async function startSecuredConsul(): Promise<SecuredConsul> {
  const bin = consulBinary();
  if (!bin) throw new Error('no Consul binary: run scripts/install-consul.sh or set KVNET_CONSUL_BIN');
  const host = '127.0.0.1';
  const [port, serfLan, serfWan, serverPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const dir = makeTempDir('consul-secured');
  const dataDir = join(dir, 'data');
  const managementToken = randomUUID();
  const pki = await makeTestPki();
  const tls = { caFile: pki.caFile, certFile: pki.clientCertFile, keyFile: pki.clientKeyFile };
  writeFileSync(
    join(dir, 'config.hcl'),
    [
      'disable_update_check = true',
      'performance { raft_multiplier = 1 }',
      `ports { https = ${port} }`,
      `tls { https { ca_file = "${pki.caFile}"  cert_file = "${pki.serverCertFile}"  key_file = "${pki.serverKeyFile}"  verify_incoming = true } }`,
      `acl { enabled = true  default_policy = "deny"  tokens { initial_management = "${managementToken}" } }`,
    ].join('\n'),
  );
  const call = (method: string, path: string, body?: unknown) => httpsCall(host, port, tls, managementToken, method, path, body);
  let proc: ManagedProcess | undefined;
  const start = async (): Promise<void> => {
    mkdirSync(dataDir, { recursive: true });
    proc = startProcess('consul-secured', bin, [
      'agent', '-server', '-bootstrap-expect=1', '-node', 'kvnet-secured', '-datacenter', 'dc1',
      '-data-dir', dataDir, '-config-file', join(dir, 'config.hcl'),
      '-bind', host, '-advertise', host, '-client', host,
      '-http-port', '-1', '-dns-port', '-1', '-grpc-port', '-1', '-grpc-tls-port', '-1',
      '-serf-lan-port', String(serfLan), '-serf-wan-port', String(serfWan), '-server-port', String(serverPort),
      '-log-level', 'warn',
    ], { logFile: join(dir, 'consul.log') });
    try {
      await waitForPort(host, port, 30_000);
      // the management token exists only once the leader has bootstrapped the ACL system
      await waitFor('a writable Consul KV behind TLS and ACLs', async () => (await call('PUT', '/kv/kvnet-probe', 'x')).text.includes('true'), 30_000, 200);
    } catch (err) {
      throw new Error(`secured Consul did not start: ${(err as Error).message}\n${proc.log().slice(-3000)}`);
    }
  };
  await start();
  return {
    port,
    managementToken,
    tls,
    otherCaFile: pki.otherCaFile,
    url: (prefix) => `consul://${host}:${port}/${prefix}`,
    options: (extra = {}) => ({ tls, auth: { token: managementToken }, ...extra }),
    async api(method, path, body) {
      const r = await call(method, path, body);
      if (r.status !== 200) throw new Error(`${method} ${path}: HTTP ${r.status}: ${r.text}`);
      return r.text === '' ? undefined : JSON.parse(r.text);
    },
    stop: async () => proc?.stop(10_000),
    start,
    wipe: () => rmSync(dataDir, { recursive: true, force: true }),
    async dispose() {
      await proc?.stop(5_000);
      removeTempDir(dir);
    },
  };
}

/** One request to the secured server's API, without keep-alive (nothing stays open). */
function httpsCall(
  host: string,
  port: number,
  tls: { caFile: string; certFile: string; keyFile: string },
  token: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host,
        port,
        method,
        path: `/v1${path}`,
        agent: false,
        ca: readFileSync(tls.caFile),
        cert: readFileSync(tls.certFile),
        key: readFileSync(tls.keyFile),
        headers: { 'X-Consul-Token': token },
        timeout: 10_000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer`)));
    req.end(body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body));
  });
}

// ---- helpers ----

let label = 0;
const stores = storesClosedAfter(test);

async function open(url: string, options?: StoreOptions): Promise<KVStore> {
  const store = await openStore(url, options);
  stores.push(store);
  return store;
}

/** A store on the shared test server under a prefix of its own. */
async function fresh(name: string, options?: StoreOptions): Promise<{ store: KVStore; url: string }> {
  const url = server.url(`kvnet-test/consul-${++label}-${name}`);
  return { store: await open(url, options), url };
}

/** Watches in the background until stopped; returns what it saw and how it ended. */
function watchInto(store: KVStore, prefix: string, from: string) {
  const controller = new AbortController();
  const events: WatchEvent[] = [];
  let ended: unknown = 'running';
  const done = (async () => {
    try {
      for await (const batch of store.watch(prefix, from, { signal: controller.signal })) events.push(...batch.events);
      ended = undefined;
    } catch (err) {
      ended = err;
    }
  })();
  return {
    events,
    get ended() {
      return ended;
    },
    async until(what: string, check: (events: WatchEvent[]) => boolean, timeoutMs = 30_000) {
      await waitFor(what, () => check(events) || ended !== 'running', timeoutMs, 50);
    },
    async stop() {
      controller.abort();
      await done;
    },
  };
}

/** Retries a call while the server is coming back. */
async function eventually<T>(call: () => Promise<T>, tries = 120): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await call();
    } catch (err) {
      if (i >= tries) throw err;
      await sleep(250);
    }
  }
}

async function sessionExists(id: string): Promise<boolean> {
  const r = await fetch(`http://${server.host}:${server.port}/v1/session/info/${id}`);
  const body = (await r.json()) as unknown[] | null;
  return Array.isArray(body) && body.length > 0;
}

function assertUnavailable(t: ExecutionContext, err: unknown, pattern: RegExp, secret?: string): void {
  t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), String(err));
  t.regex((err as Error).message, pattern);
  if (secret) t.false((err as Error).message.includes(secret), 'the token never shows in a message');
}

// ---- Consul-specific behaviour. These tests run serially (ava runs them before the concurrent
// ones): some stop servers, and the rest use 1-2 s TTLs that a machine saturated by the suite's
// 20 client processes could starve of renewals.

// ---- server restarts and lost data ----

test.serial('a watch and a lease outlive a server restart that keeps the data: the watch resumes without a re-list', async (t) => {
  const { store } = await fresh('restart', { timeoutMs: 1_500 });
  const lease = await store.grantLease(3);
  await store.put('r/eph', text('e'), { lease });
  await store.put('r/a', text('1'));
  const listing = await store.list('r');
  const watch = watchInto(store, 'r', listing.revision);
  await server.stop();
  await server.start();
  await eventually(() => store.put('r/b', text('2')));
  await watch.until('the put after the restart', (evs) => evs.some((e) => e.key === 'r/b'));
  await watch.stop();
  t.is(watch.ended, undefined, `the watch went on: ${String(watch.ended)}`);
  t.deepEqual(
    watch.events.map((e) => `${e.type}:${e.key}`),
    ['put:r/b'],
  );
  // Consul restarts session timers when a leader takes over: renewals keep the lease alive
  await sleep(2 * lease.ttlMs + 500);
  t.is((await store.get('r/eph'))?.leaseId, lease.id);
  t.is(await Promise.race([lease.lost, Promise.resolve('alive')]), 'alive');
  await lease.revoke();
});

test.serial('an index that goes backwards with other data (server back without it) makes watches ask for a re-list and ends leases', async (t) => {
  const store = await open(secured.url('kvnet-wipe'), secured.options({ timeoutMs: 1_500 }));
  // push the index well above what an empty server starts at
  await store.txn(Array.from({ length: 40 }, (_, i) => ({ op: 'put' as const, key: `w/k${i}`, value: text(String(i)) })));
  for (let i = 0; i < 60; i++) await store.put('w/counter', text(String(i)));
  const lease = await store.grantLease(10);
  await store.put('w/eph', text('e'), { lease });
  const listing = await store.list('w');
  const live = watchInto(store, 'w', listing.revision);
  // an empty prefix has the same (empty) state before and after: its watch may go on
  const emptyListing = await store.list('e');
  const empty = watchInto(store, 'e', emptyListing.revision);
  await secured.stop();
  secured.wipe();
  await secured.start();
  await eventually(() => store.put('w/after', text('x')));
  await live.until('the live watch to end', () => false, 60_000);
  t.true(hasCode(live.ended, 'KVNET_STORE_WATCH_RESET'), String(live.ended));
  // the live watch may instead have given up reconnecting if the restart was slow; both mean re-list
  t.regex((live.ended as Error).message, /backwards|could not be read/);
  t.log(`live watch: ${(live.ended as Error).message}`);

  // a watch started afterwards from the old listing notices the index going back at the next change
  const late = watchInto(store, 'w', listing.revision);
  await sleep(200);
  await store.put('w/later', text('y'));
  await late.until('the late watch to end', () => false, 60_000);
  t.true(hasCode(late.ended, 'KVNET_STORE_WATCH_RESET'), String(late.ended));
  t.regex((late.ended as Error).message, /backwards/);
  t.deepEqual(late.events, [], 'nothing from the new data was passed off as changes');

  await store.put('e/new', text('n'));
  await empty.until('e/new', (evs) => evs.some((e) => e.key === 'e/new'), 60_000);
  await empty.stop();
  t.is(empty.ended, undefined, `same state, lower index: the watch goes on (${String(empty.ended)})`);
  t.deepEqual(
    empty.events.map((e) => `${e.type}:${e.key}`),
    ['put:e/new'],
  );

  t.is(await lease.lost, 'expired', 'the session went with the data');
  t.deepEqual(
    (await store.list('w')).entries.map((e) => e.key),
    ['w/after', 'w/later'],
  );
});

// ---- watches ----

test.serial('a watch from a revision another client listed goes on when the prefix has not changed since', async (t) => {
  const { store, url } = await fresh('foreign');
  const other = await open(url);
  await store.put('f/1', text('1'));
  for (let attempt = 1; ; attempt++) {
    const listing = await other.list('f');
    const watch = watchInto(store, 'f', listing.revision);
    // give the watch time for its first read; a write before it would (correctly) force a re-list
    await sleep(1_000);
    await store.put('f/2', text(String(attempt)));
    await watch.until('f/2', (evs) => evs.some((e) => e.key === 'f/2'));
    await watch.stop();
    if (watch.ended !== undefined && attempt < 3 && /has changed since/.test(String(watch.ended))) {
      t.log(`attempt ${attempt}: the write beat the watch's first read, trying again`);
      continue;
    }
    t.is(watch.ended, undefined, String(watch.ended));
    t.deepEqual(
      watch.events.map((e) => `${e.type}:${e.key}`),
      ['put:f/2'],
    );
    break;
  }
});

test.serial('keys outside the key rules (written by other tools) are left out of listings and watches', async (t) => {
  const { store, url } = await fresh('foreign-keys');
  const prefix = new URL(url.replace('consul:', 'http:')).pathname.slice(1);
  const raw = async (key: string) => {
    const r = await fetch(`http://${server.host}:${server.port}/v1/kv/${prefix}/${key}`, { method: 'PUT', body: 'x' });
    t.true(r.ok);
  };
  await store.put('n/ok', text('1'));
  const listing = await store.list('n');
  const watch = watchInto(store, 'n', listing.revision);
  await raw('n/dir/'); // libkv stored keys with a trailing slash
  await raw('n/a%20b');
  await store.put('n/ok2', text('2'));
  await watch.until('n/ok2', (evs) => evs.some((e) => e.key === 'n/ok2'));
  await watch.stop();
  t.deepEqual(
    (await store.list('n')).entries.map((e) => e.key),
    ['n/ok', 'n/ok2'],
  );
  t.deepEqual(
    watch.events.map((e) => e.key),
    ['n/ok2'],
  );
});

// ---- leases ----

test.serial('a lease asks for a session of half its TTL (Consul ends it up to twice that after the last renewal), at least session_ttl_min (1 s on the test server, 10 s by default)', async (t) => {
  const { store } = await fresh('ttl-clamp');
  const short = await store.grantLease(0.2);
  t.is(short.ttlMs, 1_000);
  t.is(short.expiryGraceMs, 1_000, 'Consul may take up to another TTL');
  await store.put('c/k', text('x'), { lease: short });
  t.is((await store.get('c/k'))?.leaseId, short.id);
  await short.revoke();

  const strict = await open(secured.url('kvnet-ttl'), secured.options());
  const clamped = await strict.grantLease(2);
  t.is(clamped.ttlMs, 10_000);
  const again = await strict.grantLease(3);
  t.is(again.ttlMs, 10_000, 'the learned minimum applies at once');
  await Promise.all([clamped.revoke(), again.revoke()]);
  const long = await strict.grantLease(30);
  t.is(long.ttlMs, 15_000, 'a session of half the TTL inside the bounds');
  t.is(long.ttlMs + long.expiryGraceMs, 30_000, 'so the keys are gone within the TTL asked for');
  await long.revoke();
});

test.serial('rebinding a key from a dead owner\'s session is one step: watchers see puts only, and the key outlives the old session', async (t) => {
  const { store } = await fresh('rebind');
  const dead = await store.grantLease(2);
  await store.put('b/k', text('old owner'), { lease: dead });
  await dead.release(); // its owner is gone: nobody renews the session any more
  const listing = await store.list('b');
  const watch = watchInto(store, 'b', listing.revision);
  const heir = await store.grantLease(5);
  await store.put('b/k', text('new owner'), { lease: heir });
  await waitFor('the old session to expire', async () => !(await sessionExists(dead.id)), 30_000, 100);
  await store.put('b/marker', text('m'));
  await watch.until('the marker', (evs) => evs.some((e) => e.key === 'b/marker'));
  await watch.stop();
  const k = await store.get('b/k');
  t.is(decodeText(k!.value), 'new owner');
  t.is(k!.leaseId, heir.id);
  t.true(watch.events.every((e) => e.type === 'put'), JSON.stringify(watch.events.map((e) => `${e.type}:${e.key}`)));
  await heir.revoke();
});

test.serial('a plain put unbinds a key from its lease; a put with a revoked lease fails with LeaseLostError', async (t) => {
  const { store } = await fresh('unbind');
  const lease = await store.grantLease(5);
  await store.put('u/k', text('1'), { lease });
  t.is((await store.get('u/k'))?.leaseId, lease.id);
  await store.put('u/k', text('2'));
  t.is((await store.get('u/k'))?.leaseId, undefined);
  await lease.revoke();
  t.is(decodeText((await store.get('u/k'))!.value), '2', 'the key no longer belongs to the revoked lease');
  const err = await t.throwsAsync(store.put('u/other', text('x'), { lease }));
  t.true(hasCode(err, 'KVNET_STORE_LEASE_LOST'), String(err));
  t.is(await store.get('u/other'), undefined);
});

test.serial('close() ends open watches with an error and leases with "closed"; later calls say the store is closed', async (t) => {
  const { store } = await fresh('close');
  const listing = await store.list('z');
  const watch = watchInto(store, 'z', listing.revision);
  const lease = await store.grantLease(5);
  await sleep(100);
  await store.close();
  await watch.until('the watch to end', () => false);
  t.true(hasCode(watch.ended, 'KVNET_STORE_CLOSED'), String(watch.ended));
  t.is(await lease.lost, 'closed');
  t.true(hasCode(await t.throwsAsync(store.get('z/a')), 'KVNET_STORE_CLOSED'));
  t.true(await sessionExists(lease.id), 'closing releases leases, it does not revoke them');
});

// ---- limits ----

test.serial('values up to maxValueBytes are written even with the longest keys; larger ones are refused before sending', async (t) => {
  const { store } = await fresh('limits');
  const longKey = Array.from({ length: 4 }, (_, i) => String(i).repeat(250)).join('/');
  const big = new Uint8Array(MAX_VALUE_BYTES).fill(0x5a);
  const created = await store.putIf(longKey, big, { absent: true });
  t.true(created.ok);
  if (created.ok) t.true((await store.putIf(longKey, big, { revision: created.revision })).ok, 'check-index + delete + set fit in one request');
  t.is((await store.get(longKey))!.value.length, MAX_VALUE_BYTES);

  const dead = await open('consul://127.0.0.1:9/kvnet-dead', { timeoutMs: 1_000 });
  const tooBig = await t.throwsAsync(dead.put('k', new Uint8Array(MAX_VALUE_BYTES + 1)));
  t.true(hasCode(tooBig, 'KVNET_STORE_VALUE_TOO_LARGE'), String(tooBig));
  // each value fits, together they exceed Consul's 512 KiB request limit
  const together = await t.throwsAsync(
    dead.txn([
      { op: 'put', key: 'a', value: new Uint8Array(300 * 1024) },
      { op: 'put', key: 'b', value: new Uint8Array(300 * 1024) },
    ]),
  );
  t.true(hasCode(together, 'KVNET_STORE_VALUE_TOO_LARGE'), String(together));
});

test.serial('a transaction of maxTxnOps conditional puts is accepted by Consul; one more is refused before sending', async (t) => {
  const { store } = await fresh('txn-limit');
  t.is(store.capabilities.maxTxnOps, MAX_TXN_OPS);
  const keys = Array.from({ length: MAX_TXN_OPS }, (_, i) => `t/k${i}`);
  const created = await store.txn(keys.map((key) => ({ op: 'put' as const, key, value: text('0'), if: { absent: true as const } })));
  t.true(created.ok);
  if (!created.ok) return;
  const updated = await store.txn(keys.map((key, i) => ({ op: 'put' as const, key, value: text('1'), if: { revision: created.revisions[i]! } })));
  t.true(updated.ok, 'check-index + delete + set for every op stays within Consul\'s 128 operations');
  await t.throwsAsync(store.txn([...keys, 't/one-more'].map((key) => ({ op: 'delete' as const, key }))), { instanceOf: RangeError });
  const conflict = await store.txn([
    { op: 'put', key: 't/k0', value: text('2'), if: { revision: created.revisions[0]! } },
    { op: 'put', key: 't/new', value: text('n') },
  ]);
  t.deepEqual(conflict, { ok: false, failedKey: 't/k0' });
});

// ---- servers, TLS and tokens ----

test.serial('a URL with several servers fails over when the first one refuses connections', async (t) => {
  const store = await open(`consul://127.0.0.1:9,127.0.0.1:${server.port}/kvnet-test/consul-failover-refused`, { timeoutMs: 2_000 });
  const rev = await store.put('a', text('1'));
  t.is((await store.get('a'))?.revision, rev);
  const listing = await store.list('');
  t.deepEqual(listing.entries.map((e) => e.key), ['a']);
  const lease = await store.grantLease(2);
  await store.put('eph', text('e'), { lease });
  const watch = watchInto(store, '', listing.revision);
  await store.put('b', text('2'));
  await watch.until('b', (evs) => evs.some((e) => e.key === 'b'));
  await watch.stop();
  t.is(watch.ended, undefined);
  await lease.revoke();
  t.is(await store.get('eph'), undefined);
});

test.serial('a store moves to the next server when the one it used goes away, and its watch goes on', async (t) => {
  const proxy = await tcpForwarder(server.port);
  t.teardown(() => proxy.close());
  const store = await open(`consul://127.0.0.1:${proxy.port},127.0.0.1:${server.port}/kvnet-test/consul-failover-live`, { timeoutMs: 2_000 });
  await store.put('a', text('1'));
  const listing = await store.list('');
  const lease = await store.grantLease(2);
  await store.put('eph', text('e'), { lease });
  const watch = watchInto(store, '', listing.revision);
  await sleep(200);
  t.true(proxy.connections() > 0, 'the first server was in use');
  proxy.close();
  await store.put('b', text('2'));
  t.is(decodeText((await store.get('b'))!.value), '2');
  await watch.until('b', (evs) => evs.some((e) => e.key === 'b'));
  await watch.stop();
  t.is(watch.ended, undefined, `the watch moved on: ${String(watch.ended)}`);
  // renewals went to the second server too
  await sleep(2 * lease.ttlMs + 500);
  t.is((await store.get('eph'))?.leaseId, lease.id);
  await lease.revoke();
});

test.serial('a burst of writes: watches over their read budget (kv.watchrate) wait and fold the writes into fewer answers; every write still arrives', async (t) => {
  const name = `kvnet-test/consul-${++label}-budget`;
  const writer = await open(server.url(name));
  // 10 keys per second with 40 in hand: two answers of 20 keys, then each further one waits 2 s
  const budgeted = await open(server.url(name), { watchReadRate: 10 });
  const unlimited = await open(server.url(name));
  for (let i = 0; i < 20; i++) await writer.put(`b/k${String(i).padStart(2, '0')}`, text('0'));
  const count = (store: KVStore, from: string) => {
    const controller = new AbortController();
    const last = new Map<string, string>();
    let batches = 0;
    const done = (async () => {
      for await (const batch of store.watch('b', from, { signal: controller.signal })) {
        batches++;
        for (const e of batch.events) if (e.type === 'put') last.set(e.key, new TextDecoder().decode(e.value));
      }
    })().catch(() => undefined);
    return { last, batches: () => batches, stop: async () => (controller.abort(), await done) };
  };
  const from = (await writer.list('b')).revision;
  const slow = count(budgeted, from);
  const fast = count(unlimited, from);
  await sleep(300); // both have made their first read and block
  const started = performance.now();
  // 30 writes over 3 s, each key written a few times
  for (let i = 1; i <= 30; i++) {
    await writer.put(`b/k${String(i % 20).padStart(2, '0')}`, text(String(i)));
    await sleep(100);
  }
  const expected = new Map((await writer.list('b')).entries.map((e) => [e.key, new TextDecoder().decode(e.value)]));
  const caughtUp = (w: ReturnType<typeof count>): boolean => [...expected].every(([k, v]) => w.last.get(k) === v || (v === '0' && !w.last.has(k)));
  await waitFor('the unlimited watch has every write', () => caughtUp(fast), 15_000, 50);
  const fastBatches = fast.batches();
  await waitFor('the budgeted watch has every write', () => caughtUp(slow), 15_000, 50);
  const slowBatches = slow.batches();
  const elapsedS = (performance.now() - started) / 1000;
  await Promise.all([slow.stop(), fast.stop()]);
  t.log(`30 writes in ${elapsedS.toFixed(1)} s: ${fastBatches} answers without a budget, ${slowBatches} with 10 keys/s`);
  // what the budget allows in that time (40 keys in hand, 10 per second, 20 per answer), and the last answer that went over it
  const allowed = Math.floor((40 + 10 * elapsedS) / 20) + 1;
  t.true(slowBatches <= allowed, `the budgeted watch read ${slowBatches} times, at most ${allowed} in ${elapsedS.toFixed(1)} s`);
  t.true(slowBatches < fastBatches, `fewer answers than without a budget (${slowBatches} < ${fastBatches})`);
});

// ---- blocking reads and a server that stops answering (the wait is minutes; the transport keeps watch) ----

/** A store that reaches the shared server through a forwarder, a direct one on the same prefix, and a watch of it. */
test.serial('a watch of a range with no key is answered by every write elsewhere (emptyRangeWatchWakes), and waits for its own keys once a key exists at its path', async (t) => {
  const proxy = await tcpForwarder(server.port);
  t.teardown(() => proxy.close());
  const prefix = `kvnet-test/consul-${++label}-empty`;
  const watched = await open(`consul://127.0.0.1:${proxy.port}/${prefix}`);
  const direct = await open(server.url(prefix));
  t.true(watched.capabilities.emptyRangeWatchWakes);
  const watch = watchInto(watched, 'quiet/n1', (await watched.list('quiet/n1')).revision);
  await sleep(300); // its first read is at once, then it blocks
  const answersTo = async (writes: number): Promise<number> => {
    const before = proxy.fromServer();
    for (let i = 0; i < writes; i++) await direct.put(`elsewhere/k${i}`, text(String(i)));
    await sleep(300);
    return proxy.fromServer() - before;
  };
  const unanchored = await answersTo(20);
  t.true(unanchored >= 20 * 150, `20 writes elsewhere answered the empty watch each time (${unanchored} bytes to it)`);
  // the anchor: a key at the range's path without its trailing slash, outside the range
  await direct.put('quiet/n1', text('anchor'));
  await sleep(300);
  const anchored = await answersTo(20);
  t.true(anchored < unanchored / 10, `with the anchor the watch waits: ${anchored} bytes against ${unanchored}`);
  await direct.put('quiet/n1/x', text('1'));
  await watch.until('its own key', (evs) => evs.some((e) => e.key === 'quiet/n1/x'), 10_000);
  t.deepEqual(watch.events.map((e) => `${e.type}:${e.key}`), ['put:quiet/n1/x'], 'the anchor itself is not in the range');
  await watch.stop();
});

async function behindForwarder(t: ExecutionContext, name: string) {
  const proxy = await tcpForwarder(server.port);
  t.teardown(() => proxy.close());
  const prefix = `kvnet-test/consul-${++label}-${name}`;
  const store = await open(`consul://127.0.0.1:${proxy.port}/${prefix}`, { timeoutMs: 1_500 });
  const direct = await open(server.url(prefix));
  await store.put('a', text('1'));
  const watch = watchInto(store, '', (await store.list('')).revision);
  // the watch's blocking read is open on the forwarder
  await sleep(300);
  /**
   * After the partition has healed, a put through the direct store must reach the watch, and the watch
   * must still run: the blocking read that was open is cut for good (its wait is minutes), so only a
   * new read sees the put.
   */
  const seesPutAfterHeal = async (): Promise<void> => {
    proxy.heal();
    await direct.put('b', text('2'));
    await watch.until('the put after the partition', (evs) => evs.some((e) => e.key === 'b'), 10_000);
    await watch.stop();
    t.is(watch.ended, undefined, `the watch went on: ${String(watch.ended)}`);
    t.deepEqual(watch.events.map((e) => `${e.type}:${e.key}`), ['put:b']);
  };
  return { proxy, store, seesPutAfterHeal };
}

test('a watch behind a partition that drops packets reads again as soon as another call finds the server unreachable', async (t) => {
  const { proxy, store, seesPutAfterHeal } = await behindForwarder(t, 'partition-call');
  proxy.blackhole();
  const err = await t.throwsAsync(store.get('a'));
  t.true(hasCode(err, 'KVNET_STORE_UNAVAILABLE'), String(err));
  await seesPutAfterHeal();
});

test('a watch alone on a store behind a partition finds out by itself: with nothing answering, the transport checks the server', async (t) => {
  const { proxy, seesPutAfterHeal } = await behindForwarder(t, 'partition-alone');
  proxy.blackhole();
  // the check goes out within two intervals of the last answer and fails after the store's timeout
  await sleep(2 * LIVENESS_INTERVAL_MS + 1_500 + 500);
  await seesPutAfterHeal();
});

test.serial('TLS with client certificates: the CA and the certificate from the options are used, and a wrong setup fails clearly', async (t) => {
  const ok = await open(secured.url('kvnet-tls'), secured.options());
  await ok.put('k', text('v'));
  t.is(decodeText((await ok.get('k'))!.value), 'v');

  const insecure = await open(secured.url('kvnet-tls'), {
    tls: { certFile: secured.tls.certFile, keyFile: secured.tls.keyFile, insecureSkipVerify: true },
    auth: { token: secured.managementToken },
  });
  t.is(decodeText((await insecure.get('k'))!.value), 'v', 'insecureSkipVerify accepts an unknown CA');

  const noCa = await open(secured.url('kvnet-tls'), {
    tls: { certFile: secured.tls.certFile, keyFile: secured.tls.keyFile },
    auth: { token: secured.managementToken },
    timeoutMs: 2_000,
  });
  assertUnavailable(t, await t.throwsAsync(noCa.get('k')), /certificate/);
  const otherCa = await open(secured.url('kvnet-tls'), {
    tls: { ...secured.tls, caFile: secured.otherCaFile },
    auth: { token: secured.managementToken },
    timeoutMs: 2_000,
  });
  assertUnavailable(t, await t.throwsAsync(otherCa.get('k')), /certificate/);
  const noClientCert = await open(secured.url('kvnet-tls'), { tls: { caFile: secured.tls.caFile }, auth: { token: secured.managementToken }, timeoutMs: 2_000 });
  assertUnavailable(t, await t.throwsAsync(noClientCert.get('k')), /certificate/);
  const plain = await open(secured.url('kvnet-tls'), { auth: { token: secured.managementToken }, timeoutMs: 2_000 });
  const plainErr = await t.throwsAsync(plain.get('k'));
  t.true(hasCode(plainErr, 'KVNET_STORE_PROTOCOL'), String(plainErr));
  t.regex(plainErr!.message, /HTTP request to an HTTPS server/);
  await t.throwsAsync(openStore(secured.url('kvnet-tls'), { tls: { caFile: '/nonexistent/ca.pem' } }), { message: /cannot read kv.cacertfile/ });
});

test.serial('the ACL token is sent with every call: refused without it, and a token limited to the prefix is enough', async (t) => {
  const prefix = 'kvnet-acl';
  const policy = (await secured.api('PUT', '/acl/policy', {
    Name: `kvnet-${randomUUID().slice(0, 8)}`,
    Rules: `key_prefix "${prefix}/" { policy = "write" }\nsession_prefix "" { policy = "write" }`,
  })) as { ID: string };
  const token = ((await secured.api('PUT', '/acl/token', { Policies: [{ ID: policy.ID }] })) as { SecretID: string }).SecretID;

  const limited = await open(secured.url(prefix), { tls: secured.tls, auth: { token } });
  t.false(limited.url.includes(token));
  await limited.put('seed', text('s'));
  const listing = await limited.list('');
  t.deepEqual(listing.entries.map((e) => e.key), ['seed']);
  const watch = watchInto(limited, '', listing.revision);
  const lease = await limited.grantLease(10);
  await limited.put('eph', text('e'), { lease });
  t.true((await limited.txn([{ op: 'put', key: 'tx', value: text('t'), if: { absent: true } }])).ok);
  t.true(await limited.delete('seed'));
  await watch.until('the delete', (evs) => evs.some((e) => e.type === 'delete'));
  await watch.stop();
  t.is(watch.ended, undefined, String(watch.ended));
  await lease.revoke();

  const anonymous = await open(secured.url(prefix), { tls: secured.tls, timeoutMs: 2_000 });
  for (const [what, call] of [
    ['get', () => anonymous.get('tx')],
    ['put', () => anonymous.put('x', text('x'))],
    ['putIf', () => anonymous.putIf('x', text('x'), { absent: true })],
    ['grantLease', () => anonymous.grantLease(10)],
    // Consul filters a recursive read down to what the token may see and answers an empty 404: the
    // store must not mistake that for an empty prefix
    ['list', () => anonymous.list('')],
  ] as const) {
    assertUnavailable(t, await t.throwsAsync(call(), undefined, what), /refused by the server's ACLs/);
  }
  const outside = await open(secured.url('kvnet-elsewhere'), { tls: secured.tls, auth: { token }, timeoutMs: 2_000 });
  assertUnavailable(t, await t.throwsAsync(outside.put('x', text('x'))), /lacks permission 'key:write'/, token);
  assertUnavailable(t, await t.throwsAsync(outside.list('')), /refused by the server's ACLs/, token);
  const bogus = await open(secured.url(prefix), { tls: secured.tls, auth: { token: 'not-a-real-token' }, timeoutMs: 2_000 });
  assertUnavailable(t, await t.throwsAsync(bogus.get('tx')), /ACL not found/, 'not-a-real-token');
});

// ---- pure helpers ----

test('Consul\'s TTL refusal and Go durations are parsed', (t) => {
  t.deepEqual(sessionTtlBounds("Invalid Session TTL '500000000', must be between [1s=24h0m0s]"), { minMs: 1_000, maxMs: 86_400_000 });
  t.deepEqual(sessionTtlBounds("Invalid Session TTL '2000000000', must be between [10s=24h0m0s]"), { minMs: 10_000, maxMs: 86_400_000 });
  t.is(sessionTtlBounds('Permission denied'), undefined);
  t.is(parseGoDurationMs('1m30s'), 90_000);
  t.is(parseGoDurationMs('1.5s'), 1_500);
  t.is(parseGoDurationMs('250ms'), 250);
  t.is(parseGoDurationMs('soon'), undefined);
});

/** A TCP forwarder to the test server that can be shut down, sockets and all. */
/**
 * A TCP forwarder to a server on loopback. `blackhole()` makes it a partition: the open connections
 * stay open but nothing passes either way (packets dropped: neither side hears a thing), and new
 * connections fail at once (a client's connect to a partitioned server fails, after its connect
 * timeout); `heal()` forwards new connections again, while the ones cut stay cut (a server restarted
 * behind a partition never hears of them).
 */
async function tcpForwarder(targetPort: number): Promise<{ port: number; connections(): number; fromServer(): number; close(): void; blackhole(): void; heal(): void }> {
  const sockets = new Set<Socket>();
  const pairs = new Set<[Socket, Socket]>();
  let count = 0;
  let received = 0;
  let dropping = false;
  const cut = ([client, upstream]: [Socket, Socket]): void => {
    client.unpipe(upstream);
    upstream.unpipe(client);
    // keep reading, so the peers never see back-pressure, only silence
    client.on('data', () => undefined);
    upstream.on('data', () => undefined);
  };
  const srv = createServer((client) => {
    count++;
    if (dropping) {
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(targetPort, '127.0.0.1');
    const pair: [Socket, Socket] = [client, upstream];
    for (const s of pair) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(s);
        pairs.delete(pair);
      });
    }
    pairs.add(pair);
    upstream.on('data', (chunk: Buffer) => (received += chunk.length));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await new Promise<number>((resolve) =>
    srv.listen(0, '127.0.0.1', () => resolve((srv.address() as { port: number }).port)),
  );
  return {
    port,
    connections: () => count,
    fromServer: () => received,
    close() {
      srv.close();
      for (const s of sockets) s.destroy();
    },
    blackhole() {
      dropping = true;
      for (const pair of pairs) cut(pair);
      pairs.clear();
    },
    heal() {
      dropping = false;
    },
  };
}
