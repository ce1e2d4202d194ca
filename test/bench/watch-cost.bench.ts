/**
 * `npm run bench -- watch-cost [--json] [--backends consul,etcd] [--records 31,125,500] [--events 300] [--rate 20]`
 *
 * What one change costs the process that watches it, in CPU, with nothing else in that process: the
 * store layer alone, below the agent (`npm run bench -- events` measures the whole agent). A real server
 * on loopback holds `16 × records` keys in 16 ranges (an agent's 16 parts of a network's endpoints on
 * Consul; 2 000 endpoints make parts of 125); a child process watches all 16 ranges, and this process
 * changes `--events` keys, one at a time, `--rate` per second, each in one range. The child's CPU (every
 * thread: main, and V8's and libuv's helpers) is read around the changes, so the writer's
 * CPU is not in it, less the child's rate in a quiet 5 s window just before (timers, keep-alives). Rows:
 * - `impl kvnet`: `KVStore.watch` of each range, as the agent holds them. On Consul the read budget is
 *   lifted (`kv.watchrate` 10 000 000) so that every change gets its own answer, as at a low rate.
 * - `impl node-http` (Consul only): the least any Node process pays for the same answers — a blocking
 *   GET per range on a keep-alive `node:http` agent, `JSON.parse` of the body, a Map of key →
 *   ModifyIndex compared with the last one, the changed value decoded. No kvnet code; the floor under
 *   the `kvnet` row.
 * Figures per change delivered: `cpu_ms_per_event` (all threads), `main_ms_per_event`,
 * `other_ms_per_event` (threads other than the main one: mostly the garbage collector's),
 * `answers_per_event` (watch answers the child received), `kib_per_answer` (Consul: the JSON of one
 * answer). CPU is each thread's run time from /proc/<pid>/task/<tid>/schedstat (nanoseconds).
 */

import { fork } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { startServer, type KvServer } from '../support/kv-servers.ts';
import { threadCpuMs } from '../support/proc-stats.ts';
import { encodeText, openStore, type KVStore } from '../../packages/store/src/index.ts';
import { printRows, runBench, type Row } from './report.ts';

type Backend = 'consul' | 'etcd' | 'zookeeper';
type Impl = 'kvnet' | 'node-http';

interface Options {
  json: boolean;
  backends: Backend[];
  records: number[];
  events: number;
  rate: number;
}

const RANGES = [...'0123456789abcdef'];
const PREFIX = 'watchcost';
const NETWORK = 'endpoints/n1';
const SETTLE_MS = 1_500;
/** The quiet window whose CPU rate is taken off the figures. */
const IDLE_MS = 5_000;
const EVENT_WAIT_MS = 60_000;

const progress = (msg: string): void => void process.stderr.write(`[bench watch-cost] ${msg}\n`);

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, backends: ['consul', 'etcd'], records: [31, 125, 500], events: 300, rate: 20 };
  const usage = 'usage: watch-cost [--json] [--backends consul,etcd,zookeeper] [--records 31,125,500] [--events 300] [--rate 20]';
  const list = (s: string | undefined): string[] => (s ?? '').split(',').filter(Boolean);
  const positive = (flag: string, s: string | undefined): number => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, not ${JSON.stringify(s)}\n${usage}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--backends') {
      o.backends = list(argv[++i]) as Backend[];
      for (const b of o.backends) if (!['consul', 'etcd', 'zookeeper'].includes(b)) throw new Error(`unknown backend ${JSON.stringify(b)}\n${usage}`);
    } else if (a === '--records') o.records = list(argv[++i]).map((s) => positive('--records', s));
    else if (a === '--events') o.events = positive('--events', argv[++i]);
    else if (a === '--rate') o.rate = positive('--rate', argv[++i]);
    else throw new Error(`unknown option ${JSON.stringify(a)}\n${usage}`);
  }
  return o;
}

/** An endpoint-sized record (≈ 400 bytes of JSON, like the agent's). */
function record(i: number, generation: number): Uint8Array {
  return encodeText(
    JSON.stringify({
      id: endpointId(i),
      name: `c${i}`,
      node: `h${i % 100}`,
      vtep: '198.18.0.7',
      mac: '02:42:0a:00:01:02',
      ipv4: `10.0.${(i >> 8) & 255}.${i & 255}/16`,
      created: '2026-12-07T07:00:00.000Z',
      generation,
      labels: { 'com.example.service': 'web', 'com.example.tier': 'front', 'com.example.owner': 'team-a' },
      options: { 'com.docker.network.endpoint.sandbox': 'x'.repeat(64) },
    }),
  );
}

/** 64 hex digits; record `i` lies in range `RANGES[i % 16]`. */
function endpointId(i: number): string {
  return RANGES[i % 16]! + ((i * 2654435761) >>> 0).toString(16).padStart(8, '0') + i.toString(16).padStart(55, '0');
}

// ---- the watching child ----------------------------------------------------------------------

interface ChildReport {
  events: number;
  answers: number;
  bytes: number;
  mainMs: number;
  otherMs: number;
}

async function child(impl: Impl, url: string, host: string, port: number, expected: number): Promise<void> {
  let events = 0;
  let answers = 0;
  let bytes = 0;
  let counting = false;
  let allSeen: () => void = () => undefined;
  const seen = (n: number): void => {
    events += n;
    if (counting && events >= expected) allSeen();
  };
  const stop = new AbortController();
  setMaxListeners(4 * RANGES.length, stop.signal); // one listener per range's watch or request
  const loops: Promise<void>[] = [];
  let store: KVStore | undefined;
  if (impl === 'kvnet') {
    store = await openStore(url, { watchReadRate: 10_000_000 });
    for (const r of RANGES) {
      const listing = await store.list(NETWORK, { startsWith: r });
      const watch = store.watch(NETWORK, listing.revision, { startsWith: r, signal: stop.signal });
      loops.push(
        (async () => {
          for await (const batch of watch) {
            answers++;
            seen(batch.events.length);
          }
        })(),
      );
    }
  } else {
    const agent = new http.Agent({ keepAlive: true });
    for (const r of RANGES) {
      loops.push(
        (async () => {
          let index = '0';
          let held: Map<string, number> | undefined;
          while (!stop.signal.aborted) {
            const answer = await new Promise<{ index: string; text: string }>((resolve, reject) => {
              const path = `/v1/kv/${encodeURIComponent(`${PREFIX}/${NETWORK}/${r}`)}?recurse=true&index=${index}&wait=300s`;
              const req = http.get({ host, port, path, agent, signal: stop.signal }, (res) => {
                const chunks: Buffer[] = [];
                res.on('data', (c: Buffer) => chunks.push(c));
                res.on('error', reject);
                res.on('end', () => resolve({ index: String(res.headers['x-consul-index']), text: Buffer.concat(chunks).toString('utf8') }));
              });
              req.on('error', reject);
            }).catch((err: unknown) => {
              if (stop.signal.aborted) return undefined;
              throw err;
            });
            if (!answer) return;
            index = answer.index;
            if (held) {
              answers++;
              bytes += answer.text.length;
            }
            const next = new Map<string, number>();
            for (const item of JSON.parse(answer.text) as Array<{ Key: string; Value: string; ModifyIndex: number }>) {
              if (held && held.get(item.Key) !== item.ModifyIndex) {
                Buffer.from(item.Value, 'base64');
                seen(1);
              }
              next.set(item.Key, item.ModifyIndex);
            }
            held = next;
          }
        })(),
      );
    }
  }
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  // what the process spends with nothing changing (timers, keep-alives), subtracted below
  const idleStart = threadCpuMs(process.pid);
  await new Promise((r) => setTimeout(r, IDLE_MS));
  const idleEnd = threadCpuMs(process.pid);
  events = 0;
  answers = 0;
  bytes = 0;
  const done = new Promise<void>((resolve) => (allSeen = resolve));
  counting = true;
  const started = performance.now();
  const before = threadCpuMs(process.pid);
  process.send!({ ready: true });
  await Promise.race([done, new Promise((r) => setTimeout(r, EVENT_WAIT_MS + expected * 1000).unref())]);
  const after = threadCpuMs(process.pid);
  const idleShare = (performance.now() - started) / IDLE_MS;
  const idleMain = (idleEnd.main - idleStart.main) * idleShare;
  const idleOther = (idleEnd.other - idleStart.other) * idleShare;
  const report: ChildReport = { events, answers, bytes, mainMs: after.main - before.main - idleMain, otherMs: after.other - before.other - idleOther };
  process.send!({ report });
  stop.abort();
  await store?.close();
  process.exit(0);
}

// ---- the writer ------------------------------------------------------------------------------

async function measure(server: KvServer, backend: Backend, impl: Impl, records: number, o: Options, generation: { n: number }): Promise<Row> {
  const self = fileURLToPath(import.meta.url);
  const proc = fork(self, ['--child', impl, server.url(PREFIX), server.host, String(server.port), String(o.events)], {
    execArgv: ['--max-semi-space-size=1', '--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const messages: Array<{ ready?: boolean; report?: ChildReport }> = [];
  proc.on('message', (m) => messages.push(m as { ready?: boolean; report?: ChildReport }));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const waitFor = async <T>(pick: () => T | undefined, what: string, ms: number): Promise<T> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = pick();
      if (v !== undefined) return v;
      if (proc.exitCode !== null) throw new Error(`the watching child exited (${proc.exitCode}) before it ${what}`);
      if (Date.now() > deadline) throw new Error(`the watching child did not ${what} within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const writer = await openStore(server.url(PREFIX));
  try {
    await waitFor(() => (messages.some((m) => m.ready) ? true : undefined), 'start watching', 60_000);
    const total = records * RANGES.length;
    for (let e = 0; e < o.events; e++) {
      const i = (e * 7919 + generation.n * 13) % total;
      await writer.put(`${NETWORK}/${endpointId(i)}`, record(i, generation.n++));
      await new Promise((r) => setTimeout(r, 1000 / o.rate));
    }
    const report = await waitFor(() => messages.find((m) => m.report)?.report, 'receive every change', EVENT_WAIT_MS);
    if (report.events < o.events) throw new Error(`${backend}/${impl}: the child saw ${report.events} of ${o.events} changes`);
    const perEvent = (ms: number): number => Math.round((ms / report.events) * 100) / 100;
    return {
      suite: 'watch-cost',
      backend,
      impl,
      records_per_range: records,
      events: report.events,
      cpu_ms_per_event: perEvent(report.mainMs + report.otherMs),
      main_ms_per_event: perEvent(report.mainMs),
      other_ms_per_event: perEvent(report.otherMs),
      answers_per_event: Math.round((report.answers / report.events) * 100) / 100,
      kib_per_answer: report.bytes > 0 ? Math.round(report.bytes / report.answers / 102.4) / 10 : '',
    };
  } finally {
    await writer.close();
    if (proc.exitCode === null) proc.kill('SIGKILL');
    await exited;
  }
}

async function fill(server: KvServer, records: number): Promise<void> {
  const store = await openStore(server.url(PREFIX));
  try {
    const total = records * RANGES.length;
    for (let i = 0; i < total; i += 64) {
      await Promise.all(Array.from({ length: Math.min(64, total - i) }, (_, k) => store.put(`${NETWORK}/${endpointId(i + k)}`, record(i + k, 0))));
    }
  } finally {
    await store.close();
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') {
    await child(argv[1] as Impl, argv[2]!, argv[3]!, Number(argv[4]), Number(argv[5]));
    return;
  }
  const o = parseArgs(argv);
  const rows: Row[] = [];
  for (const backend of o.backends) {
    for (const records of o.records) {
      progress(`${backend}: starting a server, ${records * RANGES.length} keys in ${RANGES.length} ranges`);
      const server = await startServer(backend);
      try {
        await fill(server, records);
        const generation = { n: 1 };
        for (const impl of backend === 'consul' ? (['kvnet', 'node-http'] as const) : (['kvnet'] as const)) {
          progress(`${backend}: ${impl}, ${o.events} changes at ${o.rate}/s`);
          const row = await measure(server, backend, impl, records, o, generation);
          rows.push(row);
          if (o.json) process.stdout.write(`${JSON.stringify(row)}\n`);
        }
      } finally {
        await server.dispose();
      }
    }
  }
  if (o.json) return;
  printRows(rows, false, {
    title: `watch-cost: CPU of a process watching ${RANGES.length} ranges, per change delivered (${o.events} changes at ${o.rate}/s, one at a time)`,
    columns: ['backend', 'impl', 'records_per_range', 'events', 'cpu_ms_per_event', 'main_ms_per_event', 'other_ms_per_event', 'answers_per_event', 'kib_per_answer'],
    notes: [
      'kvnet: KVStore.watch as the agent holds it (Consul: read budget lifted, one answer per change). node-http (Consul): a bare blocking GET + JSON.parse per answer, no kvnet code.',
      'other: threads other than the main one (mostly the garbage collector). Run time per thread from schedstat, less the idle rate of a quiet 5 s window.',
    ],
  });
}

runBench(main);
