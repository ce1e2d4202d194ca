/**
 * `npm run bench -- ipam [--json] [--backends local,etcd,consul,zookeeper] [--allocators 1,4,16]
 *  [--families ipv4,ipv6] [--count 1000] [--reps 3]`
 *
 * Per backend (each a real server started for the run, or a temp SQLite file), in the same run:
 * - raw_cas_per_s: one client doing compare-and-swap on one small key, each write conditional on the
 *   revision its previous write returned (the backend's single-key CAS rate, no read in between);
 *   raw_cas_16_per_s: 16 clients doing get + putIf on that key (successful writes per second).
 * - per allocator count N and family: `--count` dynamic address allocations in one fresh pool — an
 *   IPv4 /16 or an IPv6 /64 (`family` ipv4 / ipv6; the two alternate within each repetition, so both see
 *   the same machine) — made by N allocators at once, each one its own store client and Ipam (N agents), one allocation at a time:
 *   alloc_per_s (committed allocations / wall time), alloc_p50_ms / alloc_p99_ms (latency of one
 *   allocateAddress call), retries_per_alloc (lost CAS races per committed allocation).
 * - mode `batched`: N concurrent callers on ONE Ipam (one agent serving N requests at once), whose
 *   requests share transactions.
 * Every figure is the median over `--reps` repetitions after one warm-up. --json prints one object per
 * case (nothing else on stdout); progress goes to stderr.
 */

import { join } from 'node:path';
import { encodeText, openStore, type KVStore, type StoreBackendName } from '../../packages/store/src/index.ts';
import { Ipam } from '../../packages/ipam/src/index.ts';
import { startServer, type KvServer } from '../support/kv-servers.ts';
import { makeTempDir, removeTempDir } from '../support/process.ts';
import { printRows, runBench } from './report.ts';

const ALL_BACKENDS: StoreBackendName[] = ['local', 'etcd', 'consul', 'zookeeper'];
const DEFAULT_ALLOCATORS = [1, 4, 16];
const ALL_FAMILIES = ['ipv4', 'ipv6'] as const;
type FamilyName = (typeof ALL_FAMILIES)[number];
/** The pool each case allocates in: the IPv4 /16 of the original benchmark, and an IPv6 /64. */
const POOL_SUBNET: Readonly<Record<FamilyName, string>> = { ipv4: '10.100.0.0/16', ipv6: 'fd00:100::/64' };
const DEFAULT_COUNT = 1_000;
const DEFAULT_REPS = 3;
const RAW_CAS_OPS = 500;
const RAW_CAS_CLIENTS = 16;
const WARMUP_ALLOCATIONS = 100;

interface Options {
  json: boolean;
  backends: StoreBackendName[];
  allocators: number[];
  families: FamilyName[];
  count: number;
  reps: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, backends: ALL_BACKENDS, allocators: DEFAULT_ALLOCATORS, families: [...ALL_FAMILIES], count: DEFAULT_COUNT, reps: DEFAULT_REPS };
  const usage = 'usage: ipam [--json] [--backends local,etcd,consul,zookeeper] [--allocators 1,4,16] [--families ipv4,ipv6] [--count 1000] [--reps 3]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--backends') o.backends = String(argv[++i]).split(',') as StoreBackendName[];
    else if (a === '--allocators') o.allocators = String(argv[++i]).split(',').map(Number);
    else if (a === '--families') o.families = String(argv[++i]).split(',') as FamilyName[];
    else if (a === '--count') o.count = Number(argv[++i]);
    else if (a === '--reps') o.reps = Number(argv[++i]);
    else throw new Error(`unknown option ${a}; ${usage}`);
  }
  for (const b of o.backends) if (!ALL_BACKENDS.includes(b)) throw new Error(`unknown backend ${b}; ${usage}`);
  for (const f of o.families) if (!ALL_FAMILIES.includes(f)) throw new Error(`unknown family ${f}; ${usage}`);
  if (o.allocators.some((n) => !Number.isInteger(n) || n < 1 || n > 256)) throw new Error('--allocators must be integers in 1…256');
  if (!Number.isInteger(o.count) || o.count < 1 || o.count > 60_000) throw new Error('--count must be an integer in 1…60000 (one /16)');
  if (!Number.isInteger(o.reps) || o.reps < 1) throw new Error('--reps must be a positive integer');
  return o;
}

const progress = (msg: string): void => void process.stderr.write(`${msg}\n`);
const round = (x: number, digits = 1): number => Math.round(x * 10 ** digits) / 10 ** digits;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** A server (or SQLite directory) for one backend, and URLs with a fresh prefix per case. */
interface Backend {
  url(label: string): string;
  dispose(): Promise<void>;
}

async function startBackend(name: StoreBackendName): Promise<Backend> {
  if (name === 'local') {
    const dir = makeTempDir('ipam-bench');
    return { url: (label) => `local://${join(dir, `${label}.db`)}`, dispose: async () => removeTempDir(dir) };
  }
  const server: KvServer = await startServer(name);
  return { url: (label) => server.url(`kvnet-bench/${label}`), dispose: () => server.dispose() };
}

async function rawCas(backend: Backend, label: string): Promise<{ single: number; contended: number }> {
  const store = await openStore(backend.url(label));
  const stores: KVStore[] = [store];
  try {
    let rev = await store.put('cas', encodeText('0'));
    const started = performance.now();
    for (let i = 1; i <= RAW_CAS_OPS; i++) {
      const r = await store.putIf('cas', encodeText(String(i)), { revision: rev });
      if (!r.ok) throw new Error('raw CAS lost a race with nobody');
      rev = r.revision;
    }
    const single = RAW_CAS_OPS / ((performance.now() - started) / 1000);
    for (let i = 1; i < RAW_CAS_CLIENTS; i++) stores.push(await openStore(backend.url(label)));
    let done = 0;
    const t0 = performance.now();
    await Promise.all(
      stores.map(async (s) => {
        while (done < RAW_CAS_OPS) {
          const cur = (await s.get('cas'))!;
          const r = await s.putIf('cas', encodeText(String(Number(Buffer.from(cur.value).toString()) + 1)), { revision: cur.revision });
          if (r.ok) done++;
        }
      }),
    );
    const contended = done / ((performance.now() - t0) / 1000);
    return { single, contended };
  } finally {
    await Promise.allSettled(stores.map((s) => s.close()));
  }
}

interface CaseResult {
  perS: number;
  p50: number;
  p99: number;
  retriesPerAlloc: number;
}

async function allocCase(backend: Backend, label: string, allocators: number, count: number, mode: 'agents' | 'batched', family: FamilyName): Promise<CaseResult> {
  const stores: KVStore[] = [];
  try {
    const admin = await openStore(backend.url(label));
    stores.push(admin);
    const pool = await new Ipam({ store: admin }).requestPool({ owner: 'bench', subnet: POOL_SUBNET[family], v6: family === 'ipv6' });
    const ipams: Ipam[] = [];
    for (let i = 0; i < (mode === 'agents' ? allocators : 1); i++) {
      const s = await openStore(backend.url(label));
      stores.push(s);
      ipams.push(new Ipam({ store: s, maxAttempts: 1_000 }));
    }
    for (const ipam of ipams) await ipam.getPool(pool.id); // connect before the clock starts
    const latencies: number[] = [];
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: allocators }, async (_, k) => {
        const ipam = ipams[mode === 'agents' ? k : 0]!;
        for (;;) {
          const i = next++;
          if (i >= count) return;
          const t0 = performance.now();
          await ipam.allocateAddress(pool.id, { owner: `ep-${i}` });
          latencies.push(performance.now() - t0);
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const retries = ipams.reduce((s, x) => s + x.stats().casRetries, 0);
    const committed = ipams.reduce((s, x) => s + x.stats().allocations, 0);
    if (committed !== count) throw new Error(`expected ${count} allocations, stats say ${committed}`);
    return { perS: count / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99), retriesPerAlloc: retries / count };
  } finally {
    await Promise.allSettled(stores.map((s) => s.close()));
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const rows: Array<Record<string, string | number>> = [];
  let n = 0;
  for (const name of o.backends) {
    progress(`${name}: starting`);
    const backend = await startBackend(name);
    try {
      for (const family of o.families) await allocCase(backend, `warm${++n}`, 4, WARMUP_ALLOCATIONS, 'agents', family);
      const single: number[] = [];
      const contended: number[] = [];
      const cases = new Map<string, CaseResult[]>();
      for (let rep = 0; rep < o.reps; rep++) {
        const raw = await rawCas(backend, `raw${++n}`);
        single.push(raw.single);
        contended.push(raw.contended);
        for (const mode of ['agents', 'batched'] as const) {
          for (const k of o.allocators) {
            if (mode === 'batched' && k === 1) continue;
            // alternate the family that goes first, so neither always runs on a warmer store
            const families = rep % 2 === 0 ? o.families : [...o.families].reverse();
            for (const family of families) {
              const r = await allocCase(backend, `c${++n}`, k, o.count, mode, family);
              const key = `${mode}:${k}:${family}`;
              cases.set(key, [...(cases.get(key) ?? []), r]);
              progress(`${name} rep ${rep + 1}: ${mode} ${k} allocators ${family} ${Math.round(r.perS)}/s p50 ${round(r.p50)} ms p99 ${round(r.p99)} ms retries/alloc ${round(r.retriesPerAlloc, 2)} (raw CAS ${Math.round(raw.single)}/s)`);
            }
          }
        }
      }
      const rawSingle = median(single);
      for (const [key, results] of cases) {
        const [mode, k, family] = key.split(':') as [string, string, FamilyName];
        const perS = median(results.map((r) => r.perS));
        const ipv4 = cases.get(`${mode}:${k}:ipv4`);
        rows.push({
          suite: 'ipam',
          backend: name,
          allocators: Number(k),
          mode,
          family,
          pool: POOL_SUBNET[family],
          alloc_per_s: Math.round(perS),
          alloc_p50_ms: round(median(results.map((r) => r.p50)), 2),
          alloc_p99_ms: round(median(results.map((r) => r.p99)), 2),
          retries_per_alloc: round(median(results.map((r) => r.retriesPerAlloc)), 3),
          raw_cas_per_s: Math.round(rawSingle),
          raw_cas_16_per_s: Math.round(median(contended)),
          alloc_vs_raw_cas: round(perS / rawSingle, 2),
          // how much slower this family allocates than IPv4 in the same case and run (1 = the same)
          ...(family !== 'ipv4' && ipv4 ? { ipv4_over_this: round(median(ipv4.map((r) => r.perS)) / perS, 2) } : {}),
          count: o.count,
          reps: o.reps,
        });
      }
    } finally {
      await backend.dispose();
    }
  }
  printRows(rows, o.json, {
    title: `ipam: ${o.count} dynamic allocations per case in one IPv4 /16 or IPv6 /64, medians of ${o.reps} after a warm-up`,
    columns: ['backend', 'mode', 'allocators', 'family', 'alloc_per_s', 'alloc_p50_ms', 'alloc_p99_ms', 'retries_per_alloc', 'raw_cas_per_s', 'raw_cas_16_per_s', 'alloc_vs_raw_cas', 'ipv4_over_this'],
    width: (c) => (c.length > 12 ? c.length + 1 : 13),
    notes: [
      '(agents: N allocators, each its own store client and Ipam; batched: N concurrent callers on one Ipam.',
      ' raw_cas_per_s: one client, CAS on one key with the revision of its previous write; raw_cas_16_per_s: 16 clients, get + putIf on that key;',
      ' ipv4_over_this: IPv4 rate / IPv6 rate of the same case, ≤ 1.2 is the target)',
    ],
  });
}

runBench(main);
