/**
 * `npm run bench -- events [--json] [--backend etcd|consul|zookeeper] [--peers 2000] [--events 300]
 * [--rates 5,50,0] [--observers 2] [--bundle PATH] [--compare OLD] [--before-env K=V,…] [--dns on|off]
 * [--idle S] [--cpu-prof]` (root).
 *
 * What one remote event costs an agent, measured on a steady stream of them, where the scale
 * benchmark can only take a few dozen isolated events on a loaded machine (docs/scale.md: its
 * per-event figure swings by milliseconds between runs). One real KV server and simulated hosts:
 *
 * - `h1`, the writer: a real agent whose node record the events name (so they are peers of a live
 *   node), and a benchmark-side store client in its namespace that writes endpoint records directly
 *   (`endpoints/<nid>/<eid>`, what a connect on h1 would write, without the address allocation,
 *   the name key and h1's local plumbing: none of that is seen by other hosts);
 * - `--observers` hosts per bundle, each with a real agent (the production bundle; with `--compare
 *   OLD` as many more run OLD, started alternately, so both see the same events at the same moments)
 *   and one endpoint of their own on the network, so they program its peers; `--before-env` sets
 *   environment variables for the `before` agents only (with `--compare` naming the same bundle: an
 *   A/B of a setting such as `MALLOC_ARENA_MAX`);
 * - `--peers` records on h1 first (not measured: each observer then holds that many peers), then
 *   for each rate in `--rates` (events per second; 0 = as fast as the store client writes them):
 *   `--events` new endpoint records, then the same records deleted, each phase followed by a wait
 *   until every observer's kernel has them (neighbour entries counted), and 1 s.
 *
 * With `--idle S`, first an idle row: each observer's CPU per second over S seconds with nothing
 * happening (lease renewals, store probes, the periodic drift repair: a window of several repair
 * periods, where the quiet windows of the event phases hold one repair or none).
 *
 * Figures per bundle and rate (mean over its observers): CPU ms per event over the phase (from
 * /proc: the agent's own threads, its ip/bridge batch processes, its resolver), minus the same
 * observer's CPU rate in a quiet window of {@link IDLE_MS} just before. The share of the Node process
 * alone is `own_ms_per_event`, the batch processes' `batch_ms_per_event`, the resolver's
 * `resolver_ms_per_event`. Nothing here is a pass/fail: the figures are for comparing changes (run
 * with `--compare`), and for telling where an event's cost goes.
 */

import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { keys, type EndpointRecord } from '../../packages/agent/src/layout.ts';
import { newEndpointRecord } from '../../packages/agent/src/records.ts';
import { Cluster, sleep, type ClusterBackend, type ClusterHost, type StoreSession } from '../support/cluster.ts';
import { REPO_ROOT } from '../support/process.ts';
import { cpuOf, rssAnonMib, rssMib, statCpu } from '../support/proc-stats.ts';
import { agentBundle, printRows, runBench } from './report.ts';

/** Quiet window before each phase, whose CPU rate is subtracted. */
const IDLE_MS = 15_000;
/** After every observer has an event phase's last change: time for the agents to finish what it started. */
const SETTLE_MS = 1_000;
const PROGRAMMED_TIMEOUT_MS = 120_000;
const SUBNET = '10.100.0.0/16';
const PROFILE_DIR = join(REPO_ROOT, 'dist', 'profiles', 'events');

interface Options {
  json: boolean;
  backend: ClusterBackend;
  peers: number;
  events: number;
  rates: number[];
  observers: number;
  bundle: string | undefined;
  compare: string | undefined;
  dns: 'on' | 'off';
  /** Run the observers' agents under `node --cpu-prof` (profiles in dist/profiles/events/). */
  cpuProf: boolean;
  /** Seconds of an idle measurement before the event phases (0: none). */
  idleS: number;
  /** Environment of the `before` agents only (`--before-env K=V,K=V`: e.g. an allocator setting, with `--compare` naming the same bundle). */
  beforeEnv: Record<string, string>;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, backend: 'etcd', peers: 2000, events: 300, rates: [5, 50, 0], observers: 2, bundle: undefined, compare: undefined, dns: 'on', cpuProf: false, beforeEnv: {}, idleS: 0 };
  const usage = 'usage: events [--json] [--backend etcd|consul] [--peers 2000] [--events 300] [--rates 5,50,0] [--observers 2] [--bundle PATH] [--compare OLD] [--before-env K=V,…] [--idle S] [--dns on|off] [--cpu-prof]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => String(argv[++i]);
    if (a === '--json') o.json = true;
    else if (a === '--backend') o.backend = next() as ClusterBackend;
    else if (a === '--peers') o.peers = Number(next());
    else if (a === '--events') o.events = Number(next());
    else if (a === '--rates') o.rates = next().split(',').map(Number);
    else if (a === '--observers') o.observers = Number(next());
    else if (a === '--bundle') o.bundle = next();
    else if (a === '--compare') o.compare = next();
    else if (a === '--cpu-prof') o.cpuProf = true;
    else if (a === '--idle') o.idleS = Number(next());
    else if (a === '--before-env') {
      for (const kv of next().split(',')) {
        const i = kv.indexOf('=');
        if (i <= 0) throw new Error(`--before-env takes K=V[,K=V], not ${kv}; ${usage}`);
        o.beforeEnv[kv.slice(0, i)] = kv.slice(i + 1);
      }
    } else if (a === '--dns') {
      const v = next();
      if (v !== 'on' && v !== 'off') throw new Error(`--dns must be on or off, not ${v}; ${usage}`);
      o.dns = v;
    } else if (a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; ${usage}`);
  }
  if (!['etcd', 'consul', 'zookeeper'].includes(o.backend)) throw new Error(`--backend must be a server backend (etcd, consul, zookeeper), not ${o.backend}`);
  for (const [k, v, min] of [['--peers', o.peers, 0], ['--events', o.events, 1], ['--observers', o.observers, 1]] as const) {
    if (!Number.isInteger(v) || v < min) throw new Error(`${k} must be an integer ≥ ${min}, not ${v}`);
  }
  if (o.peers + o.events > 250 * 120) throw new Error(`--peers + --events must be at most ${250 * 120} (addresses of ${SUBNET} above .128.0)`);
  if (!Number.isFinite(o.idleS) || o.idleS < 0) throw new Error(`--idle must be seconds ≥ 0, not ${o.idleS}`);
  if (o.rates.length === 0 || o.rates.some((r) => !Number.isFinite(r) || r < 0)) throw new Error(`--rates must be events per second ≥ 0 (0: as fast as possible), not ${o.rates.join(',')}`);
  return o;
}

const progress = (msg: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${msg}\n`);
const round2 = (x: number): number => Math.round(x * 100) / 100;

/** One observer's CPU split: the Node process, its batch processes (live and ended), its resolver. */
interface Split {
  own: number;
  batch: number;
  resolver: number;
}


function splitOf(h: ClusterHost, resolver: number | undefined): Split {
  const all = cpuOf(h.agent?.child.pid);
  let res = 0;
  if (resolver) {
    try {
      res = statCpu(resolver).self;
    } catch {
      res = NaN;
    }
  }
  return { own: all.self, batch: all.children - res, resolver: res };
}

const minus = (a: Split, b: Split): Split => ({ own: a.own - b.own, batch: a.batch - b.batch, resolver: a.resolver - b.resolver });


async function waitProgrammed(c: Cluster, hosts: readonly ClusterHost[], nid: string, want: number, what: string): Promise<void> {
  const deadline = Date.now() + PROGRAMMED_TIMEOUT_MS;
  const pending = new Map(hosts.map((h) => [h, -1]));
  while (pending.size > 0) {
    for (const h of [...pending.keys()]) {
      const n = await c.programmedPeers(h, nid);
      if (n === want) pending.delete(h);
      else pending.set(h, n);
    }
    if (pending.size === 0) return;
    if (Date.now() > deadline) {
      const views = await Promise.all([...pending.keys()].map(async (h) => ((await c.api(h, 'GET', `/v1/networks/${nid}`)).body as { endpoints?: unknown[] }).endpoints?.length));
      const have = [...pending].map(([h, n], i) => `${h.node} has ${n}; its view ${views[i]} endpoints`).join(', ');
      throw new Error(`${what}: not every observer has the ${want} peers after ${PROGRAMMED_TIMEOUT_MS} ms (${have}):\n${c.diagnostics()}`);
    }
    await sleep(200);
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    progress('the events benchmark needs root (network namespaces)');
    process.exit(2);
  }
  const bundle = await agentBundle(o.bundle);
  if (o.cpuProf) mkdirSync(PROFILE_DIR, { recursive: true });
  const bundles: Array<[string, string]> = o.compare ? [['before', o.compare], ['current', bundle]] : [['current', bundle]];
  const hostCount = 1 + o.observers * bundles.length;
  const c = await Cluster.create({
    backend: o.backend,
    hosts: hostCount,
    ttl: '10s',
    startAgents: false,
    progress,
    serverOptions: { nice: -10 },
    ...(o.dns === 'off' ? { agentArgs: ['--dns-address', 'off'] } : {}),
    ...(o.cpuProf ? { nodeArgsFor: (node: string) => (node === 'h1' ? undefined : ['--cpu-prof', '--cpu-prof-interval', '100', '--cpu-prof-dir', PROFILE_DIR]) } : {}),
  });
  let session: StoreSession | undefined;
  try {
    const [writer, ...observerHosts] = c.hosts as [ClusterHost, ...ClusterHost[]];
    const labelOf = new Map<ClusterHost, string>();
    process.env.KVNET_AGENT_BUNDLE = bundle;
    await c.startAgent(writer);
    // alternate the bundles over the hosts, so neither has all the early (or late) ones
    for (const [i, h] of observerHosts.entries()) {
      const [label, path] = bundles[i % bundles.length]!;
      process.env.KVNET_AGENT_BUNDLE = path;
      const saved = Object.fromEntries(Object.keys(o.beforeEnv).map((k) => [k, process.env[k]]));
      if (label === 'before') Object.assign(process.env, o.beforeEnv);
      try {
        await c.startAgent(h);
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      }
      labelOf.set(h, label);
    }
    progress(`agents: writer ${writer.node}; observers ${observerHosts.map((h) => `${h.node} (${labelOf.get(h)})`).join(', ')}`);
    const net = (await c.api(writer, 'POST', '/v1/networks', { name: 'ev', subnet: SUBNET })).body as { id: string };
    if (!net.id) throw new Error(`could not create the network: ${JSON.stringify(net)}`);
    for (const h of observerHosts) {
      const ct = await c.addContainer(h, `o${h.index}`);
      const r = await c.api(h, 'POST', '/v1/networks/ev/endpoints', { netns: ct.path, name: ct.short });
      if (r.status !== 201 && r.status !== 200) throw new Error(`connect on ${h.node}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    const pids = o.dns === 'on' ? c.resolverPids() : new Map<string, number>();
    const resolvers = new Map(observerHosts.map((h) => [h, pids.get(h.node)]));
    session = await c.storeSession();
    const nodeEntry = (await session.list('nodes')).find((e) => e.key === keys.node(writer.node));
    if (!nodeEntry) throw new Error(`no node record for ${writer.node}`);
    const nodeRecord = JSON.parse(nodeEntry.value) as { name: string; nodeId: string; advertise: string };
    const identity = { name: nodeRecord.name, id: nodeRecord.nodeId, vtep: nodeRecord.advertise };
    const record = (i: number): EndpointRecord => {
      const ip = `10.100.${128 + Math.floor(i / 250)}.${(i % 250) + 1}`;
      // spread like the random ids agents make (Consul's endpoint watches are split by their first digits)
      const id = createHash('sha256').update(`events-peer-${i}`).digest('hex');
      return newEndpointRecord(identity, { id, name: `p${i}`, network: net.id, address: `${ip}/16`, ip });
    };
    const put = async (i: number): Promise<void> => {
      const r = record(i);
      await session!.put(keys.endpoint(net.id, r.id), JSON.stringify(r));
    };
    const del = async (i: number): Promise<void> => {
      await session!.delete(keys.endpoint(net.id, record(i).id));
    };
    const base = observerHosts.length - 1; // the other observers' endpoints

    progress(`writing ${o.peers} peers on ${writer.node} (not measured)`);
    for (let i = 0; i < o.peers; i++) await put(i);
    await waitProgrammed(c, observerHosts, net.id, base + o.peers, 'the peers');
    progress('  every observer has them');

    const rows: Record<string, number | string>[] = [];
    if (o.idleS > 0) {
      progress(`  idle: ${o.idleS} s with nothing happening`);
      const a = new Map(observerHosts.map((h) => [h, splitOf(h, resolvers.get(h))]));
      const t0 = performance.now();
      await sleep(o.idleS * 1000);
      const span = (performance.now() - t0) / 1000;
      for (const [label] of bundles) {
        const hs = observerHosts.filter((h) => labelOf.get(h) === label);
        const per = hs.map((h) => minus(splitOf(h, resolvers.get(h)), a.get(h)!));
        const mean = (f: (x: Split) => number): number => round2(per.reduce((sum, x) => sum + f(x), 0) / per.length / span);
        const row = {
          suite: 'events',
          agents: label,
          backend: o.backend,
          peers: o.peers,
          phase: 'idle',
          idle_s: Math.round(span),
          idle_cpu_ms_per_s: mean((x) => x.own + x.batch + x.resolver),
          idle_own_ms_per_s: mean((x) => x.own),
          idle_batch_ms_per_s: mean((x) => x.batch),
          idle_per_observer: per.map((x) => round2((x.own + x.batch + x.resolver) / span)).join('/'),
        };
        rows.push(row);
        progress(JSON.stringify(row));
      }
    }
    let next = o.peers;
    for (const rate of o.rates) {
      const first = next;
      next += o.events;
      const ids = Array.from({ length: o.events }, (_, k) => first + k);
      for (const [phase, act, want] of [
        ['connect', put, base + o.peers + o.events],
        ['disconnect', del, base + o.peers],
      ] as const) {
        await sleep(2_000);
        const idle0 = new Map(observerHosts.map((h) => [h, splitOf(h, resolvers.get(h))]));
        const ti0 = performance.now();
        await sleep(IDLE_MS);
        const idle1 = new Map(observerHosts.map((h) => [h, splitOf(h, resolvers.get(h))]));
        const idleSpan = performance.now() - ti0;
        const cpu0 = new Map(observerHosts.map((h) => [h, splitOf(h, resolvers.get(h))]));
        const t0 = performance.now();
        const gap = rate > 0 ? 1000 / rate : 0;
        for (const [k, i] of ids.entries()) {
          if (gap > 0) {
            const due = t0 + k * gap;
            const wait = due - performance.now();
            if (wait > 0) await sleep(wait);
          }
          await act(i);
        }
        const written = performance.now() - t0;
        await waitProgrammed(c, observerHosts, net.id, want, `${phase} at ${rate}/s`);
        const programmedMs = performance.now() - t0;
        await sleep(SETTLE_MS);
        const cpu1 = new Map(observerHosts.map((h) => [h, splitOf(h, resolvers.get(h))]));
        const span = performance.now() - t0;
        for (const [label] of bundles) {
          const hs = observerHosts.filter((h) => labelOf.get(h) === label);
          const per = hs.map((h) => {
            const busy = minus(cpu1.get(h)!, cpu0.get(h)!);
            const quiet = minus(idle1.get(h)!, idle0.get(h)!);
            const scale = span / idleSpan;
            return { own: (busy.own - quiet.own * scale) / o.events, batch: (busy.batch - quiet.batch * scale) / o.events, resolver: (busy.resolver - quiet.resolver * scale) / o.events, idleOwn: (quiet.own / idleSpan) * 1000 };
          });
          const mean = (f: (x: (typeof per)[number]) => number): number => round2(per.reduce((s, x) => s + f(x), 0) / per.length);
          const row = {
            suite: 'events',
            agents: label,
            backend: o.backend,
            peers: o.peers,
            phase,
            rate: rate === 0 ? 'max' : rate,
            events: o.events,
            written_ms: Math.round(written),
            programmed_ms: Math.round(programmedMs),
            cpu_ms_per_event: mean((x) => x.own + x.batch + x.resolver),
            own_ms_per_event: mean((x) => x.own),
            batch_ms_per_event: mean((x) => x.batch),
            resolver_ms_per_event: o.dns === 'on' ? mean((x) => x.resolver) : NaN,
            own_idle_ms_per_s: mean((x) => x.idleOwn),
            own_per_observer: per.map((x) => round2(x.own)).join('/'),
            rss_mib: round2(Math.max(...hs.map((h) => rssMib(h.agent?.child.pid) ?? NaN))),
            rss_anon_mib: round2(Math.max(...hs.map((h) => rssAnonMib(h.agent?.child.pid) ?? NaN))),
          };
          rows.push(row);
          progress(JSON.stringify(row));
        }
        ids.reverse(); // disconnect in the other order (nothing depends on it; it spreads the records' positions)
      }
    }
    printRows(rows, o.json, {
      title: `events: CPU per remote event of an agent holding ${o.peers} peers, ${o.events} events per phase, ${o.observers} observer(s) per bundle (mean)`,
      columns: ['agents', 'phase', 'rate', 'idle_cpu_ms_per_s', 'idle_own_ms_per_s', 'idle_batch_ms_per_s', 'written_ms', 'programmed_ms', 'cpu_ms_per_event', 'own_ms_per_event', 'batch_ms_per_event', 'resolver_ms_per_event', 'own_idle_ms_per_s', 'own_per_observer', 'rss_mib', 'rss_anon_mib'],
      width: (col) => Math.max(col.length + 2, 12),
      notes: [
        'cpu = own (the agent process) + batch (its ip/bridge processes) + resolver, per event, minus each observer\'s rate in a quiet window just before.',
        'rate: events written per second (max: as fast as one store client writes them); programmed_ms: first write → every observer\'s kernel has the phase.',
      ],
    });
  } finally {
    await session?.close().catch(() => undefined);
    progress('tearing down');
    await c.teardown();
    if (o.cpuProf) progress(`CPU profiles (100 µs sampling) of the observers: ${PROFILE_DIR}`);
  }
}

runBench(main);
