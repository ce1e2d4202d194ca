/**
 * The IPAM proofs on a real store: one suite, run unchanged against every backend (`local.test.ts`,
 * `etcd.test.ts`, `consul.test.ts`, `zookeeper.test.ts`). Every test works under its own store
 * prefix (or database file), so tests of one file can run at the same time; the multi-process ones
 * run serially.
 */

import type { ExecutionContext, TestFn } from 'ava';
import { fileURLToPath } from 'node:url';
import {
  decodeJson,
  openStore,
  StoreUnavailableError,
  type KVStore,
  type StoreBackendName,
  type TxnOp,
  type TxnResult,
} from '@kvnet/store';
import { cidrContains, cidrContainsIp, cidrOverlaps, formatIp, parseCidr, parseIp, type Cidr } from '@kvnet/netaddr';
import { Ipam, VNI_MIN, isIpamError, type IpamOptions, type PoolInfo } from '../src/index.ts';
import { spawnJsonChild, type JsonChild } from '../../../test/support/json-child.ts';
import { useKvServer, type ServerBackend } from '../../../test/support/kv-servers.ts';

export interface IpamTarget {
  readonly backend: StoreBackendName;
  /** A store URL whose prefix (or database file) is unique to `label`. */
  url(label: string): string;
  open(url: string): Promise<KVStore>;
}

/** Multi-process tests on a loaded 2-core machine can take minutes (ava's default is 180 s of inactivity). */
const MULTI_PROCESS_TIMEOUT_MS = 600_000;
/** Store call budget against a real server: the suite runs beside other tests on a loaded machine. */
const SERVER_STORE_TIMEOUT_MS = 15_000;
const CLIENT = fileURLToPath(new URL('./fixtures/ipam-client.ts', import.meta.url));

function runClient(args: string[]): JsonChild {
  return spawnJsonChild(CLIENT, args);
}

/** A store that forwards everything, lets a test lose the answer of a committed transaction, and counts writes. */
class ProbeStore implements KVStore {
  /** Throw StoreUnavailableError after the next transaction has been applied. */
  loseNextTxnAnswer = false;
  readonly txns: Array<{ ops: number; valueBytes: number; keys: string[] }> = [];

  constructor(private readonly inner: KVStore) {}
  get url(): string {
    return this.inner.url;
  }
  get backend(): StoreBackendName {
    return this.inner.backend;
  }
  get capabilities() {
    return this.inner.capabilities;
  }
  get: KVStore['get'] = (k, o) => this.inner.get(k, o);
  list: KVStore['list'] = (p, o) => this.inner.list(p, o);
  put: KVStore['put'] = (k, v, o) => this.inner.put(k, v, o);
  putIf: KVStore['putIf'] = (k, v, c, o) => this.inner.putIf(k, v, c, o);
  delete: KVStore['delete'] = (k, o) => this.inner.delete(k, o);
  deleteIf: KVStore['deleteIf'] = (k, r, o) => this.inner.deleteIf(k, r, o);
  watch: KVStore['watch'] = (p, r, o) => this.inner.watch(p, r, o);
  grantLease: KVStore['grantLease'] = (ttl, o) => this.inner.grantLease(ttl, o);
  close: KVStore['close'] = () => this.inner.close();
  async txn(ops: readonly TxnOp[], options?: { signal?: AbortSignal }): Promise<TxnResult> {
    const r = await this.inner.txn(ops, options);
    if (r.ok) {
      this.txns.push({
        ops: ops.length,
        valueBytes: ops.reduce((n, op) => n + (op.op === 'put' ? op.value.length : 0), 0),
        keys: ops.filter((op) => op.op !== 'check').map((op) => op.key),
      });
    }
    if (this.loseNextTxnAnswer) {
      this.loseNextTxnAnswer = false;
      throw new StoreUnavailableError(this.inner.url, 'the answer to a transaction was lost (test)');
    }
    return r;
  }
}

const cidr = (text: string): Cidr => {
  const r = parseCidr(text);
  if (!r.ok) throw new Error(r.reason);
  return r.cidr;
};
const ipValue = (ip: string): bigint => parseIp(ip)!.value;

async function settleAll<T>(ps: Array<Promise<T>>): Promise<{ ok: T[]; errors: unknown[] }> {
  const rs = await Promise.allSettled(ps);
  return {
    ok: rs.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])),
    errors: rs.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : [])),
  };
}

const code = (err: unknown): string | undefined => (err as { code?: string })?.code;

/** The suite against a real server of `backend`, started for the file (one key prefix per test). */
export function runIpamSuiteOnServer(test: TestFn, backend: ServerBackend): void {
  const server = useKvServer(test, backend);
  runIpamSuite(test, () => ({ backend, url: (label) => server.url(`kvnet-ipam/${label}`), open: (url) => openStore(url, { timeoutMs: SERVER_STORE_TIMEOUT_MS }) }));
}

export function runIpamSuite(test: TestFn, target: () => IpamTarget): void {
  let n = 0;
  const opened: KVStore[] = [];
  test.after.always(async () => {
    await Promise.allSettled(opened.map((s) => s.close()));
  });

  const label = (t: ExecutionContext): string => `i${++n}-${t.title.replace(/[^a-z0-9]+/gi, '-').slice(0, 24)}`;
  const open = async (url: string): Promise<KVStore> => {
    const s = await target().open(url);
    opened.push(s);
    return s;
  };
  /** A fresh store prefix with one Ipam on it. */
  const fresh = async (t: ExecutionContext, opts: Partial<IpamOptions> = {}) => {
    const url = target().url(label(t));
    const store = await open(url);
    return { url, store, ipam: new Ipam({ store, ...opts }) };
  };
  /** `k` more clients of the same store, each with its own connection and Ipam. */
  const clients = async (url: string, k: number, opts: Partial<IpamOptions> = {}): Promise<Ipam[]> =>
    Promise.all(Array.from({ length: k }, async () => new Ipam({ store: await open(url), ...opts })));

  // ---- multi-process proofs: one at a time ----

  test.serial('8 processes × 250 dynamic allocations in one /21: 2000 distinct addresses, none reserved; all released, the pool is empty again', async (t) => {
    t.timeout(MULTI_PROCESS_TIMEOUT_MS);
    const { url, ipam } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'net-mp', subnet: '10.20.0.0/21', auxAddresses: { a: '10.20.0.2', b: '10.20.7.200' } });
    const reserved = new Set(['10.20.0.0', '10.20.7.255', '10.20.0.1', '10.20.0.2', '10.20.7.200']);
    const procs = Array.from({ length: 8 }, (_, p) => runClient([url, 'allocate', pool.id, '250', `ep${p}`, '4']));
    try {
      await Promise.all(procs.map((c) => c.next((l) => l.ready)));
      for (const c of procs) c.send('go');
      const results = await Promise.all(procs.map((c) => c.next((l) => l.done !== undefined)));
      const ips: string[] = results.flatMap((r) => r.ips as string[]);
      const retries = results.reduce((s, r) => s + (r.retries as number), 0);
      t.log(`${target().backend}: 2000 allocations from 8 processes, ${retries} CAS retries`);
      t.is(ips.length, 2000);
      t.is(new Set(ips).size, 2000, 'every address distinct');
      const net = cidr(pool.subnet);
      t.deepEqual(ips.filter((ip) => reserved.has(ip)), [], 'no network, broadcast, gateway or aux address');
      t.deepEqual(ips.filter((ip) => ipValue(ip) < net.base || ipValue(ip) > net.base + 2047n), []);
      for (const c of procs) t.is((await c.done).code, 0);
      const check = await ipam.checkPool(pool.id);
      t.deepEqual(check, { allocated: 2000, problems: [] });
      const listed = await ipam.listAllocations(pool.id);
      t.is(listed.length, 2000);
      t.true(listed.every((a) => a.owner.startsWith('ep')));

      const releasers = Array.from({ length: 8 }, (_, p) => runClient([url, 'release', pool.id, `ep${p}`, '250', '4']));
      const released = await Promise.all(releasers.map((c) => c.next((l) => l.released !== undefined)));
      t.is(released.reduce((s, r) => s + (r.released as number), 0), 2000);
      for (const c of releasers) t.is((await c.done).code, 0);
      t.deepEqual(await ipam.checkPool(pool.id), { allocated: 0, problems: [] }, 'every bit clear, no address or owner key left');
      t.deepEqual(await ipam.listAllocations(pool.id), []);
    } finally {
      for (const c of procs) c.kill();
    }
  });

  test.serial('an allocator killed with SIGKILL in the middle of its CAS loop leaves no half-written state; the next allocation works', async (t) => {
    t.timeout(MULTI_PROCESS_TIMEOUT_MS);
    const { url, ipam } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'net-kill', subnet: '10.30.0.0/24' });
    const churners = [runClient([url, 'churn', pool.id, 'a']), runClient([url, 'churn', pool.id, 'b'])];
    try {
      // let both contend for a while, then kill each at an arbitrary moment of its loop
      await Promise.all(churners.map((c) => c.next((l) => l.n >= 25)));
      for (const c of churners) {
        await new Promise((r) => setTimeout(r, Math.random() * 30));
        c.kill();
      }
      for (const c of churners) t.is((await c.done).signal, 'SIGKILL');
    } finally {
      for (const c of churners) c.kill();
    }
    const before = await ipam.checkPool(pool.id);
    t.deepEqual(before.problems, [], 'consistent after the kills');
    const held = new Set((await ipam.listAllocations(pool.id)).map((a) => a.ip));
    const next = await Promise.all(Array.from({ length: 5 }, (_, i) => ipam.allocateAddress(pool.id, { owner: `after-${i}` })));
    t.is(new Set(next.map((a) => a.ip)).size, 5);
    t.deepEqual(next.filter((a) => held.has(a.ip)), [], 'nothing handed out twice');
    const stale = (await ipam.listAllocations(pool.id)).filter((a) => a.owner.startsWith('a-'));
    // the dead allocator's addresses are reaped by owner
    for (const a of stale) t.deepEqual(await ipam.releaseOwner(pool.id, a.owner), [a.ip]);
    t.deepEqual((await ipam.checkPool(pool.id)).problems, []);
  });

  test.serial('a releasePool killed mid-way leaves the pool marked releasing: nothing can be allocated in it, and releasing again finishes it', async (t) => {
    t.timeout(MULTI_PROCESS_TIMEOUT_MS);
    const { url, ipam } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'net-rel', subnet: '10.40.0.0/22' });
    await Promise.all(Array.from({ length: 600 }, (_, i) => ipam.allocateAddress(pool.id, { owner: `e${i}` })));
    const killer = runClient([url, 'release-pool', pool.id, 'net-rel']);
    try {
      await killer.next((l) => l.started);
      // kill once the deletion of its address keys has begun (or the release is over)
      const watcher = await open(url);
      const deadline = Date.now() + 60_000;
      for (;;) {
        const info = await ipam.getPool(pool.id);
        if (!info) break;
        if (info.releasing && (await watcher.list(`ipam/addrs/${pool.id}/ips`)).entries.length < 600) break;
        if (Date.now() > deadline) break;
      }
      killer.kill();
      await killer.done;
    } finally {
      killer.kill();
    }
    const after = await ipam.getPool(pool.id);
    t.log(after ? `killed mid-release (${(await ipam.listAllocations(pool.id).catch(() => [])).length} addresses left)` : 'the release finished before the kill');
    if (after) {
      t.true(after.releasing);
      const err = await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'late' }));
      t.is(code(err), 'KVNET_IPAM_POOL_NOT_FOUND');
      const overlap = await t.throwsAsync(ipam.requestPool({ owner: 'other', subnet: '10.40.0.0/24' }));
      t.is(code(overlap), 'KVNET_IPAM_POOL_OVERLAP');
      await ipam.releasePool(pool.id, 'net-rel');
    }
    t.is(await ipam.getPool(pool.id), undefined);
    const again = await ipam.requestPool({ owner: 'other', subnet: '10.40.0.0/24' });
    t.is(again.subnet, '10.40.0.0/24');
    const store = await open(url);
    t.deepEqual((await store.list(`ipam/addrs/${pool.id}`)).entries.map((e) => e.key), [], 'no key of the old pool is left');
  });

  // ---- concurrency from separate clients in this process ----

  test('exhaustion of a /28 from 4 concurrent allocators: exactly the 13 usable addresses succeed, the rest fail naming the pool', async (t) => {
    const { url, ipam } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'net-x', subnet: '10.50.0.0/28' });
    const allocators = await clients(url, 4);
    const attempts = allocators.map(async (a, k) => {
      const ok: string[] = [];
      const errors: unknown[] = [];
      for (let i = 0; i < 8; i++) {
        try {
          ok.push((await a.allocateAddress(pool.id, { owner: `x${k}-${i}` })).ip);
        } catch (err) {
          errors.push(err);
        }
      }
      return { ok, errors };
    });
    const results = await Promise.all(attempts);
    const ok = results.flatMap((r) => r.ok);
    const errors = results.flatMap((r) => r.errors);
    t.is(ok.length, 13, '16 addresses − network − broadcast − gateway');
    t.is(new Set(ok).size, 13);
    t.false(ok.some((ip) => ['10.50.0.0', '10.50.0.1', '10.50.0.15'].includes(ip)));
    t.is(errors.length, 32 - 13);
    for (const err of errors) {
      t.is(code(err), 'KVNET_IPAM_EXHAUSTED', String(err));
      t.regex(String((err as Error).message), /10\.50\.0\.0\/28/);
    }
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 13, problems: [] });
  });

  test('concurrent requests for the same specific address from 8 clients: exactly one succeeds, the others are told who holds it', async (t) => {
    const { url, ipam } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'net-s', subnet: '10.60.0.0/24' });
    const others = await clients(url, 8);
    const { ok, errors } = await settleAll(others.map((o, i) => o.allocateAddress(pool.id, { owner: `s${i}`, address: '10.60.0.77' })));
    t.is(ok.length, 1);
    t.is(errors.length, 7);
    for (const err of errors) {
      t.is(code(err), 'KVNET_IPAM_ADDRESS_IN_USE', String(err));
      t.true((err as Error).message.includes('10.60.0.77') && (err as Error).message.includes(ok[0]!.owner), (err as Error).message);
    }
    t.deepEqual(await ipam.listAllocations(pool.id), [{ address: '10.60.0.77/24', ip: '10.60.0.77', owner: ok[0]!.owner }]);
  });

  test('20 concurrent default-subnet pool requests from 20 clients: 20 distinct, non-overlapping subnets', async (t) => {
    const { url } = await fresh(t);
    const many = await clients(url, 20);
    const pools = await Promise.all(many.map((m, i) => m.requestPool({ owner: `net-${i}` })));
    const subnets = pools.map((p) => p.subnet);
    t.is(new Set(subnets).size, 20);
    for (let i = 0; i < 20; i++) {
      t.regex(subnets[i]!, /^10\.\d+\.\d+\.0\/24$/);
      for (let j = i + 1; j < 20; j++) t.false(cidrOverlaps(cidr(subnets[i]!), cidr(subnets[j]!)), `${subnets[i]} vs ${subnets[j]}`);
    }
    t.deepEqual([...subnets].sort(), Array.from({ length: 20 }, (_, i) => `10.0.${i}.0/24`).sort(), 'the first 20 of 10.0.0.0/8');
    const listed = await many[0]!.listPools('global');
    t.is(listed.length, 20);
  });

  test('VNIs: serial from 256, one per network, a requested VNI is refused when taken, concurrent requests are distinct', async (t) => {
    const { url, ipam } = await fresh(t);
    t.is(await ipam.allocateVni({ network: 'n1' }), VNI_MIN);
    t.is(await ipam.allocateVni({ network: 'n1' }), VNI_MIN, 'a retry returns the same VNI');
    t.is(await ipam.allocateVni({ network: 'n2', requested: 4097 }), 4097);
    t.is(await ipam.allocateVni({ network: 'n2', requested: 4097 }), 4097);
    const taken = await t.throwsAsync(ipam.allocateVni({ network: 'n3', requested: 4097 }));
    t.is(code(taken), 'KVNET_IPAM_VNI_IN_USE');
    t.regex(taken!.message, /4097.*n2/);
    for (const bad of [0, 255, 16_777_216, 1.5]) {
      const err = await t.throwsAsync(ipam.allocateVni({ network: 'n3', requested: bad }));
      t.is(code(err), 'KVNET_IPAM_INVALID_REQUEST');
    }
    const others = await clients(url, 10);
    const vnis = await Promise.all(others.map((o, i) => o.allocateVni({ network: `c${i}` })));
    t.is(new Set(vnis).size, 10);
    t.false(vnis.includes(VNI_MIN) || vnis.includes(4097));
    t.false(await ipam.releaseVni(VNI_MIN, 'n2'), 'released only by its network');
    t.true(await ipam.releaseVni(VNI_MIN, 'n1'));
    t.false(await ipam.releaseVni(VNI_MIN, 'n1'));
    const next = await ipam.allocateVni({ network: 'n4' });
    t.not(next, VNI_MIN, 'a just-released VNI is not reused at once');
    t.is(await ipam.allocateVni({ network: 'n5', requested: VNI_MIN }), VNI_MIN, 'but can be requested');
    const all = await ipam.listVnis();
    t.is(all.get(4097), 'n2');
    t.is(all.size, 13);
  });

  // ---- behaviour on one client ----

  test('pools: default subnets in order, a retried request returns the same pool, overlaps are refused naming the pool and network', async (t) => {
    const { ipam, store } = await fresh(t, { defaultPools: [{ base: '10.0.0.0/8', size: 24 }] });
    const a = await ipam.requestPool({ owner: 'net-a' });
    t.like(a, { subnet: '10.0.0.0/24', gateway: '10.0.0.1/24', family: 4, addressSpace: 'global', owner: 'net-a', auxAddresses: {} });
    t.regex(a.id, /^[A-Za-z0-9._:@+=,-]+$/);
    t.deepEqual(await ipam.requestPool({ owner: 'net-a' }), a, 'retry by the same owner');
    const explicit = await ipam.requestPool({ owner: 'net-b', subnet: '10.0.1.0/24', gateway: '10.0.1.254', ipRange: '10.0.1.128/25' });
    t.like(explicit, { subnet: '10.0.1.0/24', gateway: '10.0.1.254/24', ipRange: '10.0.1.128/25' });
    t.deepEqual(await ipam.requestPool({ owner: 'net-b', subnet: '10.0.1.0/24', gateway: '10.0.1.254', ipRange: '10.0.1.128/25' }), explicit);
    const overlap = await t.throwsAsync(ipam.requestPool({ owner: 'net-c', subnet: '10.0.0.0/16' }));
    t.is(code(overlap), 'KVNET_IPAM_POOL_OVERLAP');
    t.regex(overlap!.message, /10\.0\.0\.0\/16 overlaps pool 10\.0\.0\.0\/24 \(network net-a\)/);
    // the next default skips every subnet in use, also one requested explicitly
    await ipam.requestPool({ owner: 'net-d', subnet: '10.0.3.0/24' });
    t.is((await ipam.requestPool({ owner: 'net-e' })).subnet, '10.0.2.0/24');
    t.is((await ipam.requestPool({ owner: 'net-f' })).subnet, '10.0.4.0/24');
    // another address space does not overlap
    t.is((await ipam.requestPool({ owner: 'net-g', addressSpace: 'other', subnet: '10.0.0.0/16' })).subnet, '10.0.0.0/16');
    t.is((await ipam.listPools('global')).length, 5);
    t.is((await ipam.listPools()).length, 6);
    // release frees the subnet; a second release is a no-op; another network cannot release it
    const wrong = await t.throwsAsync(ipam.releasePool(a.id, 'net-b'));
    t.is(code(wrong), 'KVNET_IPAM_POOL_OWNER_MISMATCH');
    await ipam.releasePool(a.id, 'net-a');
    await ipam.releasePool(a.id, 'net-a');
    t.is(await ipam.getPool(a.id), undefined);
    t.is((await ipam.requestPool({ owner: 'net-h' })).subnet, '10.0.0.0/24');
    const gone = await t.throwsAsync(ipam.allocateAddress(a.id, { owner: 'e' }));
    t.is(code(gone), 'KVNET_IPAM_POOL_NOT_FOUND');
    // the defaults run out
    const small = new Ipam({ store, defaultPools: [{ base: '192.168.0.0/23', size: 24 }] });
    await small.requestPool({ owner: 's1', addressSpace: 'tiny' });
    await small.requestPool({ owner: 's2', addressSpace: 'tiny' });
    const none = await t.throwsAsync(small.requestPool({ owner: 's3', addressSpace: 'tiny' }));
    t.is(code(none), 'KVNET_IPAM_EXHAUSTED');
    t.regex(none!.message, /192\.168\.0\.0\/23/);
  });

  test('addresses: never network, broadcast, gateway or aux; serial after the last one, wrapping; ip-range; specific; release by owner', async (t) => {
    const { ipam } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'n', subnet: '10.70.0.0/24', auxAddresses: { printer: '10.70.0.3' } });
    const first = await ipam.allocateAddress(pool.id, { owner: 'e1' });
    t.deepEqual(first, { address: '10.70.0.2/24', ip: '10.70.0.2', poolId: pool.id, owner: 'e1' });
    t.deepEqual(await ipam.allocateAddress(pool.id, { owner: 'e1' }), first, 'a retry by the same owner');
    t.is((await ipam.allocateAddress(pool.id, { owner: 'e2' })).ip, '10.70.0.4', 'aux address skipped');
    t.true(await ipam.releaseAddress(pool.id, '10.70.0.2/24', 'e1'));
    t.is((await ipam.allocateAddress(pool.id, { owner: 'e3' })).ip, '10.70.0.5', 'a just-released address is not reused at once');
    t.false(await ipam.releaseAddress(pool.id, '10.70.0.4', 'e3'), 'not held by that owner');
    t.false(await ipam.releaseAddress(pool.id, '10.70.0.200', 'e3'), 'not held at all');
    // specific addresses
    t.is((await ipam.allocateAddress(pool.id, { owner: 's', address: '10.70.0.254' })).address, '10.70.0.254/24');
    t.is((await ipam.allocateAddress(pool.id, { owner: 's', address: '10.70.0.254/24' })).ip, '10.70.0.254', 'retry');
    for (const [address, holder] of [
      ['10.70.0.254', 's'],
      ['10.70.0.1', '(gateway)'],
      ['10.70.0.3', '(aux:printer)'],
      ['10.70.0.0', '(network)'],
      ['10.70.0.255', '(broadcast)'],
    ] as const) {
      const err = await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'x', address }));
      t.is(code(err), 'KVNET_IPAM_ADDRESS_IN_USE', address);
      t.true(err!.message.includes(address) && err!.message.includes(holder), err!.message);
    }
    for (const address of ['10.71.0.5', 'nonsense', '10.70.0.5/16']) {
      const err = await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'x', address }));
      t.is(code(err), 'KVNET_IPAM_INVALID_REQUEST', address);
      t.true(err!.message.includes(address), err!.message);
    }
    // wrap: .6 … .253 to the end, then the search starts again at the beginning (.2 is free)
    const rest = await Promise.all(Array.from({ length: 249 }, (_, i) => ipam.allocateAddress(pool.id, { owner: `w${i}` })));
    t.is(new Set(rest.map((a) => a.ip)).size, 249);
    t.false(rest.some((a) => ['10.70.0.1', '10.70.0.3', '10.70.0.255', '10.70.0.254'].includes(a.ip)));
    t.true(rest.some((a) => a.ip === '10.70.0.2'), 'wrapped to the released address');
    const full = await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'one-too-many' }));
    t.is(code(full), 'KVNET_IPAM_EXHAUSTED');
    t.regex(full!.message, /10\.70\.0\.0\/24/);
    // release by owner (reaping) and listing
    t.deepEqual(await ipam.releaseOwner(pool.id, 's'), ['10.70.0.254']);
    t.deepEqual(await ipam.releaseOwner(pool.id, 's'), []);
    const listed = await ipam.listAllocations(pool.id);
    t.is(listed.length, 251);
    t.like(listed[0], { address: '10.70.0.2/24', ip: '10.70.0.2' });
    t.like(listed.at(-1), { address: '10.70.0.253/24', ip: '10.70.0.253' });
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 251, problems: [] });

    // an ip-range restricts dynamic addresses; a specific address may lie outside it
    const ranged = await ipam.requestPool({ owner: 'r', subnet: '10.72.0.0/16', ipRange: '10.72.5.0/30' });
    const inRange = await Promise.all([0, 1, 2, 3].map((i) => ipam.allocateAddress(ranged.id, { owner: `r${i}` })));
    t.deepEqual(inRange.map((a) => a.ip).sort(), ['10.72.5.0', '10.72.5.1', '10.72.5.2', '10.72.5.3']);
    t.is(code(await t.throwsAsync(ipam.allocateAddress(ranged.id, { owner: 'r9' }))), 'KVNET_IPAM_EXHAUSTED');
    t.is((await ipam.allocateAddress(ranged.id, { owner: 'r9', address: '10.72.9.9' })).address, '10.72.9.9/16');
  });

  test('a request retried after its first attempt committed (answer lost) returns the same address, pool and VNI', async (t) => {
    const { url } = await fresh(t);
    const probe = new ProbeStore(await open(url));
    const ipam = new Ipam({ store: probe });
    probe.loseNextTxnAnswer = true;
    const lostPool = await t.throwsAsync(ipam.requestPool({ owner: 'net-r', subnet: '10.80.0.0/24' }));
    t.is(code(lostPool), 'KVNET_STORE_UNAVAILABLE');
    const pool = await ipam.requestPool({ owner: 'net-r', subnet: '10.80.0.0/24' });
    t.is((await ipam.listPools()).length, 1, 'one pool, not two');
    probe.loseNextTxnAnswer = true;
    t.is(code(await t.throwsAsync(ipam.requestPool({ owner: 'net-auto' }))), 'KVNET_STORE_UNAVAILABLE');
    const auto = await ipam.requestPool({ owner: 'net-auto' });
    t.is((await ipam.listPools()).length, 2);
    t.is(auto.subnet, '10.0.0.0/24');

    await ipam.allocateAddress(pool.id, { owner: 'warm' }); // the cache is warm, as in a long-running agent
    probe.loseNextTxnAnswer = true;
    t.is(code(await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'ep-r' }))), 'KVNET_STORE_UNAVAILABLE');
    const a = await ipam.allocateAddress(pool.id, { owner: 'ep-r' });
    t.is(a.ip, '10.80.0.3');
    probe.loseNextTxnAnswer = true;
    t.is(code(await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'ep-s', address: '10.80.0.50' }))), 'KVNET_STORE_UNAVAILABLE');
    t.is((await ipam.allocateAddress(pool.id, { owner: 'ep-s', address: '10.80.0.50' })).ip, '10.80.0.50');
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 3, problems: [] });

    probe.loseNextTxnAnswer = true;
    t.is(code(await t.throwsAsync(ipam.allocateVni({ network: 'net-r' }))), 'KVNET_STORE_UNAVAILABLE');
    t.is(await ipam.allocateVni({ network: 'net-r' }), VNI_MIN);
    t.is((await ipam.listVnis()).size, 1);
  });

  test('IPv6: pool, gateway, static and dynamic addresses, without a bitmap of 2^64', async (t) => {
    const { ipam, store } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'n6', subnet: 'fd00:0:0:1::/64', v6: true, auxAddresses: { r: 'fd00:0:0:1::2' } });
    t.like(pool, { family: 6, subnet: 'fd00:0:0:1::/64', gateway: 'fd00:0:0:1::1/64' });
    const dyn = await Promise.all([0, 1, 2].map((i) => ipam.allocateAddress(pool.id, { owner: `e${i}` })));
    t.deepEqual(dyn.map((a) => a.address), ['fd00:0:0:1::3/64', 'fd00:0:0:1::4/64', 'fd00:0:0:1::5/64']);
    const stat = await ipam.allocateAddress(pool.id, { owner: 's', address: 'FD00:0000:0:1:ffff:ffff:ffff:ffff' });
    t.is(stat.ip, 'fd00::1:ffff:ffff:ffff:ffff', 'canonical form (RFC 5952)');
    t.is(code(await t.throwsAsync(ipam.allocateAddress(pool.id, { owner: 'x', address: 'fd00:0:0:1::4' }))), 'KVNET_IPAM_ADDRESS_IN_USE');
    t.is(code(await t.throwsAsync(ipam.requestPool({ owner: 'm', subnet: 'fd00::/48', ipRange: 'fd00:0:0:2::/64', v6: true }))), 'KVNET_IPAM_POOL_OVERLAP');
    t.is(code(await t.throwsAsync(ipam.requestPool({ owner: 'm', subnet: 'fd00:0:0:1:8000::/80', v6: true }))), 'KVNET_IPAM_POOL_OVERLAP');
    t.true(await ipam.releaseAddress(pool.id, 'fd00:0:0:1::3/64', 'e0'));
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 3, problems: [] });
    const entries = (await store.list('ipam')).entries;
    t.true(entries.every((e) => e.value.length < 512), 'every stored value is small');
    t.is(entries.filter((e) => e.key.includes('/shards/')).length, 2, 'only the shards that hold addresses exist');
  });

  test('IPv6 default pools: /64s of the cluster\'s ULA /48, chosen once and shared by every client; concurrent requests get distinct /64s; defaultPools6 overrides', async (t) => {
    const { url, ipam, store } = await fresh(t);
    const many = await clients(url, 8);
    const pools = await Promise.all(many.map((m, i) => m.requestPool({ owner: `n6-${i}`, v6: true })));
    const ula = decodeJson<{ b: string }>((await store.get('ipam/pool-table/ula6'))!.value);
    t.regex(ula.b, /^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/, 'fd00::/8 plus a 40-bit global id');
    const base = cidr(ula.b);
    t.is(new Set(pools.map((p) => p.subnet)).size, 8, 'distinct');
    for (const p of pools) {
      const sub = cidr(p.subnet);
      t.like(p, { family: 6, auxAddresses: {} });
      t.is(sub.prefix, 64, p.subnet);
      t.true(cidrContains(base, sub), `${p.subnet} inside ${ula.b}`);
      t.is(p.gateway, `${formatIp(6, sub.base + 1n)}/64`);
    }
    t.deepEqual([...pools.map((p) => cidr(p.subnet).base - base.base)].sort((a, b) => (a < b ? -1 : 1)), Array.from({ length: 8 }, (_, i) => BigInt(i) << 64n), 'the first eight /64s');
    t.deepEqual(await many[3]!.requestPool({ owner: 'n6-3', v6: true }), pools[3], 'a retry returns the same pool');
    t.is((await ipam.requestPool({ owner: 'n4' })).subnet, '10.0.0.0/24', 'IPv4 defaults are their own');
    const next = await (await clients(url, 1))[0]!.requestPool({ owner: 'n6-late', v6: true });
    t.is(cidr(next.subnet).base - base.base, 8n << 64n, 'a later client finds the recorded ULA');
    const own = new Ipam({ store, defaultPools6: [{ base: 'fd00:beef::/48', size: 64 }] });
    t.is((await own.requestPool({ owner: 'n6-own', v6: true })).subnet, 'fd00:beef::/64');
    t.deepEqual(decodeJson<{ b: string }>((await store.get('ipam/pool-table/ula6'))!.value), ula, 'the ULA record never changes');
  });

  test('IPv6 bad input: a subnet larger than /64, an overlapping pool, an address outside the subnet, aux or range outside — clear errors naming the value, nothing stored', async (t) => {
    const { ipam, store } = await fresh(t);
    const pool = await ipam.requestPool({ owner: 'n', subnet: 'fd00:77:1::/64', v6: true });
    const snapshot = async (): Promise<string[]> => (await store.list('ipam')).entries.map((e) => `${e.key}@${e.revision}`);
    const before = await snapshot();
    const cases: Array<[string, () => Promise<unknown>, string, RegExp]> = [
      ['/48', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:78::/48', v6: true }), 'KVNET_IPAM_INVALID_REQUEST', /invalid subnet "fd00:78::\/48": is larger than \/64/],
      ['/48 with a /56 range', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:78::/48', ipRange: 'fd00:78::/56', v6: true }), 'KVNET_IPAM_INVALID_REQUEST', /invalid ipRange "fd00:78::\/56": is larger than \/64/],
      ['same /64', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:77:1::/64', v6: true }), 'KVNET_IPAM_POOL_OVERLAP', /subnet fd00:77:1::\/64 overlaps pool fd00:77:1::\/64 \(network n\)/],
      ['a /48 holding it', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:77:1::/48', ipRange: 'fd00:77:1:9::/64', v6: true }), 'KVNET_IPAM_POOL_OVERLAP', /subnet fd00:77:1::\/48 overlaps pool fd00:77:1::\/64 \(network n\)/],
      ['a /96 inside it', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:77:1::aa:0:0/96', v6: true }), 'KVNET_IPAM_POOL_OVERLAP', /overlaps pool fd00:77:1::\/64/],
      ['aux outside', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:79::/64', auxAddresses: { r: 'fd00:7a::1' } }), 'KVNET_IPAM_INVALID_REQUEST', /invalid auxAddresses\.r "fd00:7a::1": is not inside subnet fd00:79::\/64/],
      ['range outside', () => ipam.requestPool({ owner: 'm', subnet: 'fd00:79::/64', ipRange: 'fd00:7a::/80' }), 'KVNET_IPAM_INVALID_REQUEST', /invalid ipRange "fd00:7a::\/80": is not inside subnet fd00:79::\/64/],
      ['--ip6 outside', () => ipam.allocateAddress(pool.id, { owner: 'e', address: 'fd00:77:2::5' }), 'KVNET_IPAM_INVALID_REQUEST', new RegExp(`invalid address "fd00:77:2::5": is not inside pool fd00:77:1::/64 \\(${pool.id}\\)`)],
      ['--ip6 of the other family', () => ipam.allocateAddress(pool.id, { owner: 'e', address: '10.77.1.5' }), 'KVNET_IPAM_INVALID_REQUEST', /"10\.77\.1\.5": is not inside pool fd00:77:1::\/64/],
      ['--ip6 with another length', () => ipam.allocateAddress(pool.id, { owner: 'e', address: 'fd00:77:1::5/80' }), 'KVNET_IPAM_INVALID_REQUEST', /prefix length 80 differs from the pool's \/64/],
      ['--ip6 the gateway', () => ipam.allocateAddress(pool.id, { owner: 'e', address: 'fd00:77:1::1' }), 'KVNET_IPAM_ADDRESS_IN_USE', /fd00:77:1::1.*\(gateway\)/],
    ];
    for (const [what, p, want, message] of cases) {
      const err = await t.throwsAsync(p as () => Promise<never>, undefined, what);
      t.is(code(err), want, `${what}: ${String(err)}`);
      t.regex(err!.message, message, what);
    }
    t.deepEqual(await snapshot(), before, 'nothing was stored by any of them');
    t.is((await ipam.listPools()).length, 1);

    // bounded: a /48 with a /64 ip-range hands out dynamic addresses only from the range, specific ones from anywhere
    const wide = await ipam.requestPool({ owner: 'w', subnet: 'fd00:7b::/48', ipRange: 'fd00:7b:0:5::/64', v6: true });
    const dyn = await Promise.all([0, 1, 2].map((i) => ipam.allocateAddress(wide.id, { owner: `w${i}` })));
    t.deepEqual(dyn.map((a) => a.address), ['fd00:7b:0:5::/48', 'fd00:7b:0:5::1/48', 'fd00:7b:0:5::2/48']);
    t.is((await ipam.allocateAddress(wide.id, { owner: 'ws', address: 'fd00:7b:0:ffff::9' })).address, 'fd00:7b:0:ffff::9/48');
    t.deepEqual(await ipam.checkPool(wide.id), { allocated: 4, problems: [] });
  });

  test('60 concurrent IPv6 allocations from 4 agents in a default /64 and from one agent in an ip-range with an aux address: distinct, inside, none reserved; all released', async (t) => {
    const { url, ipam } = await fresh(t);
    const agents = await clients(url, 4);
    const pool = await ipam.requestPool({ owner: 'n60', v6: true });
    const net = cidr(pool.subnet);
    const got = await Promise.all(Array.from({ length: 60 }, (_, i) => agents[i % 4]!.allocateAddress(pool.id, { owner: `ep-${i}` })));
    t.is(new Set(got.map((a) => a.ip)).size, 60, 'every address distinct');
    t.true(got.every((a) => cidrContainsIp(net, parseIp(a.ip)!) && a.address.endsWith('/64')));
    t.false(got.some((a) => a.ip === formatIp(6, net.base) || `${a.ip}/64` === pool.gateway), 'neither the anycast nor the gateway address');
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 60, problems: [] });
    const released = await Promise.all(got.map((a, i) => agents[(i + 1) % 4]!.releaseAddress(pool.id, a.address, a.owner)));
    t.true(released.every(Boolean));
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 0, problems: [] });
    t.deepEqual(await ipam.listAllocations(pool.id), []);

    const ranged = await ipam.requestPool({ owner: 'r60', subnet: 'fd00:88::/64', ipRange: 'fd00:88::100/120', auxAddresses: { router: 'fd00:88::105' }, v6: true });
    const range = cidr('fd00:88::100/120');
    const inRange = await Promise.all(Array.from({ length: 60 }, (_, i) => ipam.allocateAddress(ranged.id, { owner: `r-${i}` })));
    t.is(new Set(inRange.map((a) => a.ip)).size, 60);
    t.true(inRange.every((a) => cidrContainsIp(range, parseIp(a.ip)!)), 'only from the ip-range');
    t.false(inRange.some((a) => a.ip === 'fd00:88::105'), 'never the aux address');
    const aux = await t.throwsAsync(ipam.allocateAddress(ranged.id, { owner: 'x', address: 'fd00:88::105' }));
    t.regex(aux!.message, /fd00:88::105.*\(aux:router\)/);
    t.deepEqual((await Promise.all(inRange.map((a) => ipam.releaseOwner(ranged.id, a.owner)))).flat().sort(), inRange.map((a) => a.ip).sort());
    t.deepEqual(await ipam.checkPool(ranged.id), { allocated: 0, problems: [] });
  });

  test('write amplification stays small in a /16: one allocation writes a few small keys; every value fits every backend', async (t) => {
    const { url } = await fresh(t);
    const probe = new ProbeStore(await open(url));
    const ipam = new Ipam({ store: probe });
    const pool = await ipam.requestPool({ owner: 'big', subnet: '10.90.0.0/16' });
    probe.txns.length = 0;
    for (let i = 0; i < 300; i++) await ipam.allocateAddress(pool.id, { owner: `e${String(i).padStart(64, 'f')}` }); // Docker-sized ids
    t.is(probe.txns.length, 300, 'one transaction per sequential allocation');
    const maxBytes = Math.max(...probe.txns.map((x) => x.valueBytes));
    const maxOps = Math.max(...probe.txns.map((x) => x.ops));
    t.log(`${target().backend}: per allocation at most ${maxOps} ops and ${maxBytes} value bytes`);
    t.true(maxOps <= 6, `${maxOps} ops`);
    t.true(maxBytes <= 512, `${maxBytes} bytes`);
    const crossing = probe.txns.filter((x) => x.keys.some((k) => k.endsWith('/cursor')));
    t.is(crossing.length, 1, 'the cursor key is written once per 256 addresses, not per allocation');
    const entries = (await probe.list('ipam')).entries;
    t.true(Math.max(...entries.map((e) => e.value.length)) < 512);
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 300, problems: [] });
    // concurrent allocations in one process share transactions
    probe.txns.length = 0;
    await Promise.all(Array.from({ length: 60 }, (_, i) => ipam.allocateAddress(pool.id, { owner: `c${i}` })));
    t.true(probe.txns.length < 60, `${probe.txns.length} transactions for 60 concurrent allocations`);
    t.true(probe.txns.every((x) => x.ops <= probe.capabilities.maxTxnOps));
    t.deepEqual(await ipam.checkPool(pool.id), { allocated: 360, problems: [] });
  });

  test('errors are typed: code and kind on every IPAM error', async (t) => {
    const { ipam } = await fresh(t);
    const err = await t.throwsAsync(ipam.requestPool({ owner: 'n', subnet: '10.0.0.1/24' }));
    t.true(isIpamError(err));
    t.like(err as object, { code: 'KVNET_IPAM_INVALID_REQUEST', kind: 'invalid', field: 'subnet', value: '10.0.0.1/24' });
    t.regex(err!.message, /10\.0\.0\.0\/24/);
    const missing = await t.throwsAsync(ipam.allocateAddress('10.9.9.0-24-000000000000', { owner: 'e' }));
    t.like(missing as object, { code: 'KVNET_IPAM_POOL_NOT_FOUND', kind: 'not-found' });
    t.deepEqual(await ipam.releaseOwner('10.9.9.0-24-000000000000', 'e'), []);
    t.is(await ipam.getPool('no/such/pool'), undefined);
  });
}

export type { PoolInfo };
