/**
 * `npm run bench -- store [--json] [--backends local,etcd,consul,zookeeper] [--clients 1,8] [--seconds S] [--watch N]`
 *
 * Per backend (each a real server on loopback started here, or a fresh SQLite file), per client
 * count C (C separate store connections in this process, each issuing one call at a time):
 * - put_per_s: unconditional puts of 64-byte values, each client on its own keys;
 * - get_per_s: linearizable gets of those keys;
 * - cas_per_s: read-modify-write CAS increments, each client on its own key (no contention: the
 *   raw cost of one conditional write; contention is what the IPAM benchmark measures);
 * - watch_p50_ms / watch_p99_ms: from a put being issued to a watcher on another connection
 *   holding the event, over `--watch` writes issued one at a time (the same measurement is
 *   repeated for each C row).
 * Each rate is measured for `--seconds` after a one-second warm-up. Prints a table, or with --json one
 * object per case on stdout and nothing else (progress goes to stderr).
 */

import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, runId } from '../support/process.ts';
import { consulBinary, startServer, type KvServer } from '../support/kv-servers.ts';
import { decodeText, encodeText, openStore, type KVStore } from '../../packages/store/src/index.ts';
import { runBench } from './report.ts';

type Backend = 'local' | 'etcd' | 'consul' | 'zookeeper';
const ALL: Backend[] = ['local', 'etcd', 'consul', 'zookeeper'];

interface Options {
  json: boolean;
  backends: Backend[];
  clients: number[];
  seconds: number;
  watch: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, backends: ALL, clients: [1, 8], seconds: 3, watch: 300 };
  const usage = 'usage: store [--json] [--backends local,etcd,consul,zookeeper] [--clients 1,8] [--seconds S] [--watch N]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--backends') o.backends = String(argv[++i]).split(',') as Backend[];
    else if (a === '--clients') o.clients = String(argv[++i]).split(',').map(Number);
    else if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a === '--watch') o.watch = Number(argv[++i]);
    else throw new Error(`unknown option ${a}; ${usage}`);
  }
  for (const b of o.backends) if (!ALL.includes(b)) throw new Error(`unknown backend "${b}"; ${usage}`);
  if (o.clients.some((c) => !Number.isInteger(c) || c < 1 || c > 256)) throw new Error('--clients must be integers in 1…256');
  if (!(o.seconds > 0)) throw new Error('--seconds must be positive');
  if (!Number.isInteger(o.watch) || o.watch < 10) throw new Error('--watch must be an integer ≥ 10');
  return o;
}

const progress = (msg: string): void => void process.stderr.write(`[bench store] ${msg}\n`);

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const round = (x: number, digits = 1): number => Number(x.toFixed(digits));

/** Runs `op(client, i)` in a loop on every client for `seconds`; returns completed ops per second. */
async function rate(clients: KVStore[], seconds: number, op: (s: KVStore, c: number, i: number) => Promise<unknown>): Promise<number> {
  const run = async (ms: number): Promise<number> => {
    const until = Date.now() + ms;
    const counts = await Promise.all(
      clients.map(async (s, c) => {
        let n = 0;
        while (Date.now() < until) await op(s, c, n++);
        return n;
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  };
  await run(1_000); // warm-up
  const started = performance.now();
  const n = await run(seconds * 1_000);
  return n / ((performance.now() - started) / 1_000);
}

async function watchLatency(writer: KVStore, watcher: KVStore, prefix: string, count: number): Promise<number[]> {
  const listing = await watcher.list(prefix);
  const seen = new Map<string, number>();
  let notify: (() => void) | undefined;
  const controller = new AbortController();
  const watching = (async () => {
    for await (const batch of watcher.watch(prefix, listing.revision, { signal: controller.signal })) {
      const now = performance.now();
      for (const e of batch.events) if (e.type === 'put') seen.set(decodeText(e.value), now);
      notify?.();
    }
  })();
  const latencies: number[] = [];
  try {
    for (let i = 0; i < count + 20; i++) {
      const id = `w${i}`;
      const got = new Promise<void>((resolve) => {
        notify = () => seen.has(id) && resolve();
      });
      const t0 = performance.now();
      await writer.put(`${prefix}/k${i % 10}`, encodeText(id));
      await Promise.race([got, new Promise((r) => setTimeout(r, 5_000))]);
      const at = seen.get(id);
      if (at === undefined) throw new Error(`watch did not deliver write ${id} within 5 s`);
      // From the put being issued to the watcher holding it (includes the commit); first 20 are warm-up.
      if (i >= 20) latencies.push(at - t0);
    }
  } finally {
    controller.abort();
    await watching.catch(() => {});
  }
  return latencies.sort((a, b) => a - b);
}

interface Row {
  suite: 'store';
  backend: Backend;
  clients: number;
  put_per_s: number;
  get_per_s: number;
  cas_per_s: number;
  watch_p50_ms: number;
  watch_p99_ms: number;
}

async function benchBackend(backend: Backend, o: Options, run: string): Promise<Row[]> {
  let server: KvServer | undefined;
  let dir: string | undefined;
  const opened: KVStore[] = [];
  try {
    let url: string;
    if (backend === 'local') {
      dir = makeTempDir('bench-store');
      url = `local://${join(dir, 'store.db')}`;
    } else {
      if (backend === 'consul' && !consulBinary()) throw new Error('the Consul binary is missing: run scripts/install-consul.sh');
      server = await startServer(backend);
      url = server.url(`bench-${run}`);
    }
    const open = async (): Promise<KVStore> => {
      const s = await openStore(url);
      opened.push(s);
      return s;
    };
    const rows: Row[] = [];
    const value = encodeText('x'.repeat(64));
    for (const c of o.clients) {
      progress(`${backend}: ${c} client(s)`);
      const clients = await Promise.all(Array.from({ length: c }, open));
      const put_per_s = await rate(clients, o.seconds, (s, ci, i) => s.put(`p/c${ci}/k${i % 100}`, value));
      const get_per_s = await rate(clients, o.seconds, (s, ci, i) => s.get(`p/c${ci}/k${i % 100}`));
      for (const [ci, s] of clients.entries()) await s.put(`cas/c${ci}`, encodeText('0'));
      const cas_per_s = await rate(clients, o.seconds, async (s, ci) => {
        for (;;) {
          const cur = (await s.get(`cas/c${ci}`))!;
          const r = await s.putIf(`cas/c${ci}`, encodeText(String(Number(decodeText(cur.value)) + 1)), { revision: cur.revision });
          if (r.ok) return;
        }
      });
      const lat = await watchLatency(clients[0]!, await open(), `watch/c${c}`, o.watch);
      rows.push({
        suite: 'store',
        backend,
        clients: c,
        put_per_s: Math.round(put_per_s),
        get_per_s: Math.round(get_per_s),
        cas_per_s: Math.round(cas_per_s),
        watch_p50_ms: round(percentile(lat, 50), 2),
        watch_p99_ms: round(percentile(lat, 99), 2),
      });
    }
    return rows;
  } finally {
    await Promise.allSettled(opened.map((s) => s.close()));
    await server?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const run = runId();
  const rows: Row[] = [];
  for (const b of o.backends) {
    for (const row of await benchBackend(b, o, run)) {
      rows.push(row);
      if (o.json) process.stdout.write(`${JSON.stringify(row)}\n`);
    }
  }
  if (!o.json) {
    const head = ['backend', 'clients', 'put/s', 'get/s', 'cas/s', 'watch p50 ms', 'watch p99 ms'];
    const lines = rows.map((r) => [r.backend, r.clients, r.put_per_s, r.get_per_s, r.cas_per_s, r.watch_p50_ms, r.watch_p99_ms].map(String));
    const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
    for (const l of [head, ...lines]) process.stdout.write(`${l.map((c, i) => c.padStart(widths[i]!)).join('  ')}\n`);
  }
}

runBench(main);
