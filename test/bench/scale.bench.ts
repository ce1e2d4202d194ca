/**
 * `npm run bench -- scale [--json] [--backends etcd,consul] [--hosts 10,30,100] [--per-host 20]
 * [--samples 20] [--burst 200] [--wave 10] [--bundle PATH] [--label NAME] [--compare PATH]
 * [--quiet-load 3] [--cpu-prof-host N] [--dns on|off] [--store-opt KEY=VALUE]…` (root; `--store-opt` is
 * passed to every agent as `--cluster-store-opt`, e.g. `kv.timeout=15s`).
 *
 * How kvnet's cost grows with the cluster: for each backend × host count, one simulated host per
 * agent (real `kvnet agent` processes from the production bundle, `npm run build`, rebuilt here
 * unless `--bundle` names another; `--compare OLD` runs each case with that bundle first, labelled
 * `before`), one real KV server, and:
 *
 * - a network `scale` with `--per-host` endpoints on every host (2 000 at 100 hosts × 20: every host
 *   then holds ~2 000 peers), and a network `side` with one endpoint on each of the first
 *   ⌈hosts/10⌉ hosts (at least 2) — the "network used by a subset of hosts";
 * - idle: every agent's CPU over {@link IDLE_WINDOW_MS} with nothing happening (lease renewals, the
 *   periodic drift repair), subtracted from the phases below as a rate per agent;
 * - net_visible: `POST /v1/networks` returning on one host (rotating) → `GET /v1/networks/NAME`
 *   answering 200 on every host, polled in rounds every {@link pollMs} ms;
 * - join at a low rate (one connect, then wait until it is reachable, then the next):
 *   `POST …/endpoints` returning → the new endpoint answering a ping from an observer container on
 *   every other host (`ping -D` from a shell kept open in each observer, 10 ms interval; observers'
 *   ARP retransmit time 10 ms) = join_reachable; the same probes sent at the same moment to an
 *   endpoint already reachable = probe_floor (what the measurement itself takes on a loaded machine);
 *   the new endpoint's neighbour and FDB entries present in every other host's kernel (`ip -ts
 *   monitor neigh` in each host's overlay namespace) = join_programmed;
 * - CPU per remote event, without probes (their packets' softirq time is charged to whatever process
 *   runs): `--samples` connects, then as many disconnects, one at a time; for each, the CPU every
 *   other agent spent (its own, the `ip`/`bridge` processes it ran and waited for, and its live batch
 *   processes, from /proc) until {@link SETTLE_MS} after every kernel had it, minus its idle rate;
 *   agent_own_cpu_*: the same for the agent process's own threads alone (no batch processes, no
 *   resolver), to tell the Node process's share from its children's;
 * - side churn: connect + disconnect on `side` from its first host, repeatedly; the CPU of agents with
 *   no endpoint on `side` (minus idle) per event — what they pay for a network they do not use;
 * - burst: `--burst` connects issued at once, spread over the hosts (one the agent answers 503 is tried
 *   again after a second, at most twice, and counted: burst_connect_retries; the same for the fill's
 *   connects, fill_connect_retries); time from the first issued to the
 *   last endpoint programmed on every other host (burst_total_ms), per endpoint connect returning →
 *   programmed everywhere (p50/p99), then one ping from three observers to every burst endpoint
 *   (burst_unreachable must be 0); a connect still refused after its retries is counted
 *   (burst_failed_connects, the first errors printed) and the others are measured;
 * - store operations per connect over the low-rate phase, from the agents' own counters
 *   (`kvnet_store_requests_total`, `kvnet_store_watch_events_total`: summed over every agent) where the
 *   bundle has them, and from the server (etcd `/metrics`: Range / Txn+Put+DeleteRange RPCs and
 *   watch events sent; Consul's Prometheus counters: KV and txn HTTP calls), idle rates subtracted;
 * - agent RSS (largest and mean VmRSS) at the end, and the largest private part of it (RssAnon:
 *   VmRSS less the node binary's and libraries' pages, which every Node process on a host shares);
 * - each host's DNS resolver process (the names face's; the agent starts it detached, in a session of
 *   its own, but it stays the agent's child, so agent_cpu_* and agent_children_rss include it): its
 *   CPU alone in the same windows as the agent's (resolver_cpu_*), and its RSS. `--dns off` runs the agents with `--dns-address off` (no names face, no resolver), to see
 *   what names cost at scale.
 *
 * The machine is shared and has two cores: `--quiet-load L` waits (polling every 30 s, at most 45 min)
 * for the 1-minute load average to drop below L before building each case; agents start `--wave` at a
 * time; the KV server runs at `--server-nice` (default -10: it stands in for a store on machines of
 * its own); the load average at start and end is printed with each case. p50/p99 are nearest-rank after
 * one warm-up sample. `--cpu-prof-host N` runs host N's agent with `node --cpu-prof` and keeps the
 * profile. With --json: one object per case on stdout, nothing else (progress goes to stderr).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, mapLimit, sleep, type ClusterBackend, type ClusterHost, type Container, type Endpoint } from '../support/cluster.ts';
import { REPO_ROOT, run } from '../support/process.ts';
import { childrenRssMib, cpuOf, rssAnonMib, rssMib, statCpu, type Cpu } from '../support/proc-stats.ts';
import { agentBundle, printRows, runBench } from './report.ts';

const DEFAULT_BACKENDS: ClusterBackend[] = ['etcd'];
const DEFAULT_HOSTS = [10];
const DEFAULT_PER_HOST = 20;
const DEFAULT_SAMPLES = 20;
const DEFAULT_BURST = 200;
/** Agents started at a time. */
const DEFAULT_WAVE = 10;
/**
 * The KV server runs at nice -10: in a real cluster it has machines of its own, here it shares two
 * cores with every agent, and at 100 hosts a burst starved it until calls timed out (docs/scale.md).
 */
const DEFAULT_SERVER_NICE = -10;
/** Quiet window over which each agent's idle CPU rate is measured (covers one periodic drift repair, 30 s). */
const IDLE_WINDOW_MS = 32_000;
/** After the last host answered: time for every agent to finish what the event started. */
const SETTLE_MS = 1_000;
/** A connect at a low rate is issued at least this long after the previous one returned. */
const LOW_RATE_GAP_MS = 1_500;
const REACHABLE_TIMEOUT_S = 30;
const PROGRAMMED_TIMEOUT_MS = 180_000;
const VISIBLE_TIMEOUT_MS = 30_000;
/** Connects in flight while the endpoints are put in place (not measured). */
const FILL_CONCURRENCY = 6;
/** Containers (network namespaces) made at a time. */
const CONTAINER_CONCURRENCY = 8;
/** Hosts whose kernel is read at a time while waiting for the fill to be programmed. */
const READ_CONCURRENCY = 8;
/** Observers that ping every burst endpoint once the burst is programmed. */
const BURST_PING_OBSERVERS = 3;
const QUIET_POLL_MS = 30_000;
const QUIET_MAX_WAIT_MS = 45 * 60_000;
const PING_INTERVAL_S = '0.01';
const SCALE_SUBNET = '10.100.0.0/16';
const SIDE_SUBNET = '10.101.0.0/24';

interface Options {
  json: boolean;
  backends: ClusterBackend[];
  hosts: number[];
  perHost: number;
  samples: number;
  burst: number;
  wave: number;
  bundle: string | undefined;
  label: string;
  /** Another bundle run right before each case, labelled `before` (same machine state, same invocation). */
  compare: string | undefined;
  quietLoad: number | undefined;
  cpuProfHost: number | undefined;
  /** Nice value of the KV server (it stands in for a store on machines of its own). */
  serverNice: number;
  /** `off`: agents run with `--dns-address off` (no names face, no resolver process). */
  dns: 'on' | 'off';
  /** `--cluster-store-opt` values for every agent (`--store-opt kv.timeout=15s`, repeatable). */
  storeOpts: string[];
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    json: false,
    backends: DEFAULT_BACKENDS,
    hosts: DEFAULT_HOSTS,
    perHost: DEFAULT_PER_HOST,
    samples: DEFAULT_SAMPLES,
    burst: DEFAULT_BURST,
    wave: DEFAULT_WAVE,
    bundle: undefined,
    label: 'current',
    compare: undefined,
    quietLoad: undefined,
    cpuProfHost: undefined,
    serverNice: DEFAULT_SERVER_NICE,
    dns: 'on',
    storeOpts: [],
  };
  const usage =
    'usage: scale [--json] [--backends etcd,consul] [--hosts 10,30,100] [--per-host 20] [--samples 20] [--burst 200] [--wave 10] [--bundle PATH] [--label NAME] [--compare PATH] [--quiet-load 3] [--cpu-prof-host N] [--server-nice -10] [--dns on|off] [--store-opt KEY=VALUE]…';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => String(argv[++i]);
    if (a === '--json') o.json = true;
    else if (a === '--backends') o.backends = next().split(',') as ClusterBackend[];
    else if (a === '--hosts') o.hosts = next().split(',').map(Number);
    else if (a === '--per-host') o.perHost = Number(next());
    else if (a === '--samples') o.samples = Number(next());
    else if (a === '--burst') o.burst = Number(next());
    else if (a === '--wave') o.wave = Number(next());
    else if (a === '--bundle') o.bundle = next();
    else if (a === '--label') o.label = next();
    else if (a === '--compare') o.compare = next();
    else if (a === '--quiet-load') o.quietLoad = Number(next());
    else if (a === '--cpu-prof-host') o.cpuProfHost = Number(next());
    else if (a === '--server-nice') o.serverNice = Number(next());
    else if (a === '--store-opt') o.storeOpts.push(next());
    else if (a === '--dns') {
      const v = next();
      if (v !== 'on' && v !== 'off') throw new Error(`--dns must be on or off, not ${v}; ${usage}`);
      o.dns = v;
    } else if (a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; ${usage}`);
  }
  for (const b of o.backends) if (!['local', 'etcd', 'consul', 'zookeeper'].includes(b)) throw new Error(`unknown backend ${b}; ${usage}`);
  if (o.hosts.some((n) => !Number.isInteger(n) || n < 3 || n > 1000)) throw new Error('--hosts must be integers in 3…1000');
  for (const [k, v] of [['--per-host', o.perHost], ['--samples', o.samples], ['--burst', o.burst], ['--wave', o.wave]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer`);
  }
  return o;
}

const progress = (msg: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${msg}\n`);
const round1 = (x: number): number => Math.round(x * 10) / 10;
const round2 = (x: number): number => Math.round(x * 100) / 100;

function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

function load1(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

async function waitForQuiet(limit: number): Promise<string> {
  const started = Date.now();
  for (;;) {
    const l = load1();
    if (l < limit) return `load ${l} < ${limit} after ${Math.round((Date.now() - started) / 60_000)} min`;
    if (Date.now() - started > QUIET_MAX_WAIT_MS) return `load still ${l} after ${QUIET_MAX_WAIT_MS / 60_000} min: ran anyway`;
    progress(`  waiting for the 1-minute load average (${l}) to drop below ${limit}`);
    await sleep(QUIET_POLL_MS);
  }
}

// ---------------------------------------------------------------- CPU and memory



/** Per host: the agent's CPU (with its children's) and its resolver's, at one moment. */
type CpuSnapshot = { at: number; cpu: Map<string, Cpu>; resolver: Map<string, number> };

/** Resolver pids of the running case (set once its agents are up; empty with `--dns off`). */
let resolvers = new Map<string, number>();

function snapshotCpu(c: Cluster): CpuSnapshot {
  const resolver = new Map<string, number>();
  for (const [node, pid] of resolvers) {
    try {
      resolver.set(node, statCpu(pid).self);
    } catch {
      resolver.set(node, NaN); // the resolver ended: its CPU is no longer known
    }
  }
  return { at: Date.now(), cpu: new Map(c.hosts.map((h) => [h.node, cpuOf(h.agent?.child.pid)])), resolver };
}

/** Per host: the resolver's CPU ms between two snapshots (0 without resolvers). */
function resolverDelta(a: CpuSnapshot, b: CpuSnapshot, node: string): number {
  return (b.resolver.get(node) ?? 0) - (a.resolver.get(node) ?? 0);
}

/** Per host: CPU ms of the agent process's own threads between two snapshots (no children). */
function ownDelta(a: CpuSnapshot, b: CpuSnapshot, node: string): number {
  return b.cpu.get(node)!.self - a.cpu.get(node)!.self;
}

/** Per host: CPU ms (self + children) between two snapshots. */
function cpuDelta(a: CpuSnapshot, b: CpuSnapshot, node: string): number {
  const x = a.cpu.get(node)!;
  const y = b.cpu.get(node)!;
  return y.self + y.children - (x.self + x.children);
}

// ---------------------------------------------------------------- store counters

type Counters = Record<string, number>;

/** Sums the samples of a Prometheus text exposition per metric name (+ selected label), e.g. `kvnet_store_requests_total{kind="write"}`. */
function promSum(text: string, name: string, label?: [string, RegExp]): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    if (label) {
      const lm = new RegExp(`${label[0]}="([^"]*)"`).exec(m[2] ?? '');
      if (!lm || !label[1].test(lm[1]!)) continue;
    }
    sum += Number(m[3]);
  }
  return sum;
}

async function agentCounters(c: Cluster): Promise<Counters | undefined> {
  const texts = await mapLimit(c.hosts, READ_CONCURRENCY, async (h) => (await run('curl', ['-sf', 'http://127.0.0.1:9473/metrics'], { netns: h.name, allowFailure: true, timeoutMs: 20_000 })).stdout);
  if (!texts.some((t) => t.includes('kvnet_store_requests_total'))) return undefined;
  const sum = (f: (t: string) => number): number => texts.reduce((s, t) => s + f(t), 0);
  return {
    reads: sum((t) => promSum(t, 'kvnet_store_requests_total', ['kind', /^read$/])),
    writes: sum((t) => promSum(t, 'kvnet_store_requests_total', ['kind', /^write$/])),
    watchEvents: sum((t) => promSum(t, 'kvnet_store_watch_events_total')),
  };
}

async function serverCounters(c: Cluster): Promise<Counters | undefined> {
  const server = c.server;
  if (!server) return undefined;
  const netns = `${c.id}kv`;
  if (server.backend === 'etcd') {
    const t = (await run('curl', ['-sf', `http://${server.host}:${server.port}/metrics`], { netns, allowFailure: true, timeoutMs: 20_000 })).stdout;
    const rpc = (method: RegExp): number => promSum(t, 'grpc_server_handled_total', ['grpc_method', method]);
    return { reads: rpc(/^Range$/), writes: rpc(/^(Txn|Put|DeleteRange)$/), watchEvents: promSum(t, 'etcd_debugging_mvcc_events_total') };
  }
  if (server.backend === 'consul') {
    const t = (await run('curl', ['-sf', `http://${server.host}:${server.port}/v1/agent/metrics?format=prometheus`], { netns, allowFailure: true, timeoutMs: 20_000 })).stdout;
    const http = (method: RegExp, path: RegExp): number =>
      t
        .split('\n')
        .filter((l) => l.startsWith('consul_api_http_count{') && method.test(/method="([^"]*)"/.exec(l)?.[1] ?? '') && path.test(/path="([^"]*)"/.exec(l)?.[1] ?? ''))
        .reduce((s, l) => s + Number(l.split(/\s+/).pop()), 0);
    // GET v1/kv covers reads and blocking watch queries alike: reported as reads.
    return { reads: http(/^GET$/, /^v1_kv_/), writes: http(/^(PUT|DELETE)$/, /^v1_(kv|txn)/), watchEvents: NaN };
  }
  return undefined;
}

function counterDelta(a: Counters | undefined, b: Counters | undefined): Counters | undefined {
  if (!a || !b) return undefined;
  return Object.fromEntries(Object.keys(a).map((k) => [k, b[k]! - a[k]!]));
}

// ---------------------------------------------------------------- probes

/**
 * A shell kept open in an observer container: each `IP TIMEOUT` line starts `ping -D -c 1 -w TIMEOUT`
 * at 10 ms intervals and prints `IP [<epoch seconds of the first reply>` (or just `IP`) when it ends, so
 * a probe costs one fork, not an nsenter and a process start in the benchmark.
 */
class Prober {
  private readonly child: ChildProcess;
  private readonly waiting = new Map<string, Array<(t: number | undefined) => void>>();
  private buf = '';

  constructor(readonly ns: string) {
    const script = `while read ip w; do ( r=$(ping -D -n -c 1 -w "$w" -i ${PING_INTERVAL_S} "$ip" 2>/dev/null | grep -m1 icmp_seq); echo "$ip \${r%%]*}" ) & done`;
    this.child = spawn('nsenter', [`--net=/run/netns/${ns}`, 'sh', '-c', script], { stdio: ['pipe', 'pipe', 'ignore'] });
    this.child.stdout!.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        const [ip, stamp] = line.split(' ');
        const t = stamp?.startsWith('[') ? Number(stamp.slice(1)) * 1000 : undefined;
        const w = this.waiting.get(ip!);
        w?.shift()?.(t !== undefined && Number.isFinite(t) ? t : undefined);
        if (w && w.length === 0) this.waiting.delete(ip!);
      }
    });
  }

  /** Epoch ms of the first reply from `ip`, or undefined when none came within `timeoutS`. */
  probe(ip: string, timeoutS = REACHABLE_TIMEOUT_S): Promise<number | undefined> {
    return new Promise((resolve) => {
      const w = this.waiting.get(ip) ?? [];
      w.push(resolve);
      this.waiting.set(ip, w);
      this.child.stdin!.write(`${ip} ${timeoutS}\n`);
    });
  }

  stop(): void {
    this.child.stdin!.end();
    this.child.kill('SIGKILL');
  }
}

/**
 * `ip -ts monitor neigh` in one overlay namespace: when each neighbour entry (IP → MAC) and each FDB
 * entry of vxlan0 (MAC → VTEP; reported with NOARP) appeared, from the monitor's own timestamps.
 */
class PeerMonitor {
  private readonly child: ChildProcess;
  private readonly neigh = new Map<string, number>();
  private readonly fdb = new Map<string, number>();
  private buf = '';
  private readonly listeners = new Set<() => void>();

  constructor(readonly ns: string) {
    this.child = spawn('ip', ['-n', ns, '-ts', 'monitor', 'neigh'], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, TZ: 'UTC' } });
    this.child.stdout!.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let i: number;
      let changed = false;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const m = /^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d+)\] (\S+) dev vxlan0 lladdr (\S+) (.*)$/.exec(line);
        if (!m) continue;
        const t = Date.parse(`${m[1]}Z`) + Number(`0.${m[2]}`) * 1000;
        if (/\bNOARP\b/.test(m[5]!)) this.fdb.set(m[4]!.toLowerCase(), t);
        else if (/\bPERMANENT\b/.test(m[5]!)) this.neigh.set(m[3]!, t);
        changed = true;
      }
      if (changed) for (const l of [...this.listeners]) l();
    });
  }

  /** When both entries of a peer were there (epoch ms), or undefined. */
  programmedAt(ip: string, mac: string): number | undefined {
    const n = this.neigh.get(ip);
    const f = this.fdb.get(mac.toLowerCase());
    return n !== undefined && f !== undefined ? Math.max(n, f) : undefined;
  }

  /** Resolves with {@link programmedAt} once it is known, or undefined at `deadline`. */
  waitFor(ip: string, mac: string, deadline: number): Promise<number | undefined> {
    const now = this.programmedAt(ip, mac);
    if (now !== undefined) return Promise.resolve(now);
    return new Promise((resolve) => {
      const check = (): void => {
        const t = this.programmedAt(ip, mac);
        if (t === undefined && Date.now() < deadline) return;
        this.listeners.delete(check);
        clearTimeout(timer);
        resolve(t);
      };
      const timer = setTimeout(check, Math.max(0, deadline - Date.now()) + 1);
      this.listeners.add(check);
    });
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------- the cluster under test

async function apiOk<T>(c: Cluster, host: ClusterHost, method: string, path: string, body?: unknown): Promise<T> {
  const r = await c.api(host, method, path, body);
  if (r.status < 200 || r.status >= 300) throw new Error(`${method} ${path} on ${host.node}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

function connect(c: Cluster, ct: Container, network: string): Promise<Endpoint> {
  return apiOk<Endpoint>(c, ct.host, 'POST', `/v1/networks/${network}/endpoints`, { netns: ct.path, name: ct.short });
}

/**
 * Connects of the fill and of the burst refused with 503 (the store unreachable for a moment: on two
 * cores a hundred agents can starve it of CPU); reported as `fill_connect_retries` and `burst_connect_retries`.
 */
const connectRetries = { fill: 0, burst: 0 };

/**
 * A fill or burst connect: one that the agent answers 503 (its store unreachable for a moment under
 * the load) is tried again after a second, at most twice, as a user would, and counted; any other
 * failure, or a third 503, fails the benchmark.
 */
async function connectRetrying(c: Cluster, ct: Container, network: string, phase: keyof typeof connectRetries): Promise<Endpoint> {
  for (let attempt = 0; ; attempt++) {
    const r = await c.api(ct.host, 'POST', `/v1/networks/${network}/endpoints`, { netns: ct.path, name: ct.short });
    if (r.status >= 200 && r.status < 300) return r.body as Endpoint;
    if (r.status !== 503 || attempt >= 2) throw new Error(`POST /v1/networks/${network}/endpoints on ${ct.host.node}: ${r.status} ${JSON.stringify(r.body)}`);
    connectRetries[phase]++;
    progress(`  ${phase} connect ${ct.short} on ${ct.host.node}: ${r.status} ${JSON.stringify(r.body)}; trying again`);
    await sleep(1000);
  }
}

/** 10 ms ARP retries on a container's interface (its own key: non-initial namespaces have no `neigh/default`). */
async function fastArp(c: Cluster, ct: Container, ifname: string): Promise<void> {
  const r = await c.exec(ct.name, 'sysctl', '-qw', `net.ipv4.neigh.${ifname}.retrans_time_ms=10`);
  if (r.code !== 0) throw new Error(`ARP retransmit time on ${ifname} in ${ct.name}: ${r.stderr.trim()}`);
}

/** Number of permanent neighbour entries on vxlan0 of the host's overlay namespace of `nid`. */

/** Polls every host in rounds (every `pollMs`) until `GET /v1/networks/NAME` answers 200; ms from `t0` to the last. */
async function timeVisible(c: Cluster, name: string, t0: number, pollMs: number): Promise<number> {
  const pending = new Set(c.hosts);
  let last = t0;
  while (pending.size > 0) {
    if (Date.now() - t0 > VISIBLE_TIMEOUT_MS) throw new Error(`network ${name} not visible on ${[...pending].map((h) => h.node).join(', ')} after ${VISIBLE_TIMEOUT_MS} ms`);
    await mapLimit([...pending], 16, async (h) => {
      const r = await c.api(h, 'GET', `/v1/networks/${name}`);
      if (r.status === 200) {
        pending.delete(h);
        last = Math.max(last, Date.now());
      }
    });
    if (pending.size > 0) await sleep(pollMs);
  }
  return last - t0;
}

interface CaseResult {
  row: Record<string, number | string>;
}

async function benchCase(o: Options, backend: ClusterBackend, hostCount: number, bundle: string): Promise<CaseResult> {
  const quiet = o.quietLoad !== undefined ? await waitForQuiet(o.quietLoad) : 'not waited for';
  const loadStart = load1();
  progress(`scale bench (${o.label}): ${backend}, ${hostCount} hosts × ${o.perHost} endpoints; ${quiet}`);
  const profDir = o.cpuProfHost !== undefined ? join(REPO_ROOT, 'dist', 'profiles', `${o.label}-${backend}-${hostCount}`) : undefined;
  if (profDir) mkdirSync(profDir, { recursive: true });
  process.env.KVNET_AGENT_BUNDLE = bundle;
  const c = await Cluster.create({
    backend,
    hosts: hostCount,
    ttl: '10s',
    agentWave: o.wave,
    progress,
    serverOptions: { prometheus: true, nice: o.serverNice },
    ...(o.storeOpts.length > 0 ? { storeOpts: o.storeOpts } : {}),
    ...(o.dns === 'off' ? { agentArgs: ['--dns-address', 'off'] } : {}),
    ...(profDir ? { nodeArgsFor: (node: string) => (node === `h${o.cpuProfHost}` ? ['--cpu-prof', '--cpu-prof-dir', profDir] : undefined) } : {}),
  });
  const probers: Prober[] = [];
  const monitors = new Map<string, PeerMonitor>();
  resolvers = o.dns === 'on' ? c.resolverPids() : new Map();
  if (o.dns === 'on') progress(`  ${resolvers.size} resolver processes found (their CPU and RSS are reported as resolver_*)`);
  try {
    const hosts = c.hosts;
    const n = hosts.length;
    const pollMs = Math.max(10, Math.round(n / 2));
    const h1 = hosts[0]!;
    const scale = await apiOk<{ id: string }>(c, h1, 'POST', '/v1/networks', { name: 'scale', subnet: SCALE_SUBNET });
    await apiOk(c, h1, 'POST', '/v1/networks', { name: 'side', subnet: SIDE_SUBNET });
    const sideHosts = hosts.slice(0, Math.max(2, Math.ceil(n / 10)));

    // ---- containers: the fill, the side network, low-rate samples, the burst
    progress(`  making ${n * o.perHost + sideHosts.length + 1 + 2 * o.samples + 1 + o.burst} containers`);
    const fill: Container[][] = hosts.map(() => []);
    const specs: Array<[ClusterHost, string, (ct: Container) => void]> = [];
    for (const h of hosts) for (let j = 0; j < o.perHost; j++) specs.push([h, `c${h.index}x${j}`, (ct) => fill[h.index - 1]!.push(ct)]);
    const sideCts: Container[] = [];
    for (const h of sideHosts) specs.push([h, `s${h.index}`, (ct) => sideCts.push(ct)]);
    const churnCts: Container[] = [];
    specs.push([sideHosts[0]!, 'q', (ct) => churnCts.push(ct)]);
    const joinCts: Container[] = new Array(o.samples + 1);
    for (let k = 0; k <= o.samples; k++) specs.push([hosts[(k * 7) % n]!, `j${k}`, (ct) => (joinCts[k] = ct)]);
    const eventCts: Container[] = new Array(o.samples);
    const eventEps = new Map<string, Endpoint>();
    for (let k = 0; k < o.samples; k++) specs.push([hosts[(k * 11 + 3) % n]!, `v${k}`, (ct) => (eventCts[k] = ct)]);
    const burstCts: Container[] = new Array(o.burst);
    for (let k = 0; k < o.burst; k++) specs.push([hosts[k % n]!, `b${k}`, (ct) => (burstCts[k] = ct)]);
    await mapLimit(specs, CONTAINER_CONCURRENCY, async ([h, name, put]) => put(await c.addContainer(h, name)));
    for (const list of fill) list.sort((a, b) => a.short.localeCompare(b.short, 'en', { numeric: true }));

    // ---- fill: every host's endpoints on `scale`, interleaved across hosts
    const fillOrder: Container[] = [];
    for (let j = 0; j < o.perHost; j++) for (const list of fill) fillOrder.push(list[j]!);
    progress(`  connecting ${fillOrder.length} endpoints to scale (${FILL_CONCURRENCY} at a time)`);
    const fillCpu0 = snapshotCpu(c);
    const fillStart = Date.now();
    const observerEps = new Map<string, Endpoint>();
    let done = 0;
    connectRetries.fill = 0;
    await mapLimit(fillOrder, FILL_CONCURRENCY, async (ct) => {
      const ep = await connectRetrying(c, ct, 'scale', 'fill');
      if (ct === fill[ct.host.index - 1]![0]) observerEps.set(ct.host.node, ep);
      if (++done % 200 === 0) progress(`    ${done}/${fillOrder.length} connected`);
    });
    const fillConnectMs = Date.now() - fillStart;
    const expected = n * o.perHost;
    progress(`  waiting until every host has programmed its ${expected - o.perHost} peers`);
    const pendingHosts = new Set(hosts);
    while (pendingHosts.size > 0) {
      // counted from the last connect's return: the fill's connects alone took 38 min at 100 hosts on Consul
      if (Date.now() - fillStart - fillConnectMs > PROGRAMMED_TIMEOUT_MS * 5) throw new Error(`fill not programmed on ${[...pendingHosts].map((h) => h.node).join(', ')}`);
      await mapLimit([...pendingHosts], READ_CONCURRENCY, async (h) => {
        if ((await c.programmedPeers(h, scale.id)) === expected - o.perHost) pendingHosts.delete(h);
      });
      if (pendingHosts.size > 0) await sleep(2_000);
    }
    const fillMs = Date.now() - fillStart;
    const fillCpu1 = snapshotCpu(c);
    const fillCpuPerEvent = hosts.reduce((s, h) => s + cpuDelta(fillCpu0, fillCpu1, h.node), 0) / (expected * n);
    progress(`  fill: connects ${fillConnectMs} ms, programmed everywhere ${fillMs} ms; agent CPU ${round2(fillCpuPerEvent)} ms per (endpoint × host)`);
    for (const ct of sideCts) await connect(c, ct, 'side');

    // ---- observers and monitors
    const observers = new Map<string, { ct: Container; prober: Prober }>();
    for (const h of hosts) {
      const ct = fill[h.index - 1]![0]!;
      await fastArp(c, ct, observerEps.get(h.node)?.ifname ?? 'eth0');
      const prober = new Prober(ct.name);
      probers.push(prober);
      observers.set(h.node, { ct, prober });
      monitors.set(h.node, new PeerMonitor(c.overlayNetns(h, scale.id)));
    }
    await sleep(500); // monitors subscribed

    // ---- idle
    progress(`  idle: ${IDLE_WINDOW_MS / 1000} s with nothing happening`);
    const [idleAgents0, idleServer0] = [await agentCounters(c), await serverCounters(c)];
    const idle0 = snapshotCpu(c);
    await sleep(IDLE_WINDOW_MS);
    const idle1 = snapshotCpu(c);
    const [idleAgents1, idleServer1] = [await agentCounters(c), await serverCounters(c)];
    const idleSpan = idle1.at - idle0.at;
    const idleRate = new Map(hosts.map((h) => [h.node, cpuDelta(idle0, idle1, h.node) / idleSpan]));
    const idleAgentRate = counterDelta(idleAgents0, idleAgents1);
    const idleServerRate = counterDelta(idleServer0, idleServer1);
    const idleCpuPerS = (hosts.reduce((s, h) => s + idleRate.get(h.node)!, 0) / n) * 1000;
    const idleOwnPerS = (hosts.reduce((s, h) => s + ownDelta(idle0, idle1, h.node) / idleSpan, 0) / n) * 1000;
    const idleResolverPerS = (hosts.reduce((s, h) => s + resolverDelta(idle0, idle1, h.node) / idleSpan, 0) / n) * 1000;
    progress(`  idle CPU per agent: ${round1(idleCpuPerS)} ms/s (the Node process itself ${round1(idleOwnPerS)}, its resolver ${round1(idleResolverPerS)})`);
    const busy = (a: CpuSnapshot, b: CpuSnapshot, node: string): number => cpuDelta(a, b, node) - idleRate.get(node)! * (b.at - a.at);

    // ---- net_visible
    const visible: number[] = [];
    for (let k = 0; k <= o.samples; k++) {
      const host = hosts[(k * 3) % n]!;
      await apiOk(c, host, 'POST', '/v1/networks', { name: `v${k}`, subnet: `10.102.${k}.0/24` });
      const ms = await timeVisible(c, `v${k}`, Date.now(), pollMs);
      if (k > 0) visible.push(ms);
      progress(`  network v${k} created on ${host.node}: listed on all ${n} hosts after ${ms} ms${k === 0 ? ' (warm-up)' : ''}`);
    }
    for (let k = 0; k <= o.samples; k++) await apiOk(c, hosts[(k * 3) % n]!, 'DELETE', `/v1/networks/v${k}`);
    await sleep(SETTLE_MS);

    // ---- join at a low rate: latency (pings from every other host, and the kernels' own timestamps)
    const reachable: number[] = [];
    const programmed: number[] = [];
    const floor: number[] = [];
    const connectMs: number[] = [];
    let joinAgents0: Counters | undefined;
    let joinServer0: Counters | undefined;
    let joinStart = 0;
    for (let k = 0; k <= o.samples; k++) {
      if (k === 1) {
        [joinAgents0, joinServer0] = [await agentCounters(c), await serverCounters(c)];
        joinStart = Date.now();
      }
      const ct = joinCts[k]!;
      const host = ct.host;
      const t0 = Date.now();
      const ep = await connect(c, ct, 'scale');
      const t1 = Date.now();
      const others = hosts.filter((h) => h !== host);
      const deadline = t1 + PROGRAMMED_TIMEOUT_MS;
      // The probes' own latency, at the same moment: the same observers ping an endpoint they reach already.
      const known = observerEps.get(host.node)!.ip;
      const [replies, stamps, floors] = await Promise.all([
        Promise.all(others.map((h) => observers.get(h.node)!.prober.probe(ep.ip))),
        Promise.all(others.map((h) => monitors.get(h.node)!.waitFor(ep.ip, ep.mac, deadline))),
        Promise.all(others.map((h) => observers.get(h.node)!.prober.probe(known))),
      ]);
      const missing = others.filter((_, i) => replies[i] === undefined).map((h) => h.node);
      if (missing.length > 0) throw new Error(`${ct.short} (${ep.ip}) on ${host.node} never answered from ${missing.join(', ')}`);
      const reachMs = Math.max(0, Math.max(...(replies as number[])) - t1);
      const progMs = Math.max(0, Math.max(...stamps.map((s) => s ?? Infinity)) - t1);
      const floorMs = Math.max(0, Math.max(...floors.map((f) => f ?? Infinity)) - t1);
      if (k > 0) {
        reachable.push(reachMs);
        programmed.push(progMs);
        floor.push(floorMs);
        connectMs.push(t1 - t0);
      }
      progress(`  join ${ct.short} on ${host.node}: connect ${t1 - t0} ms; reachable from ${others.length} hosts after ${Math.round(reachMs)} ms (an endpoint they reach already: ${Math.round(floorMs)} ms), programmed after ${Math.round(progMs)} ms${k === 0 ? ' (warm-up)' : ''}`);
      await sleep(LOW_RATE_GAP_MS);
    }
    const joinSpan = Date.now() - joinStart;
    const [joinAgents1, joinServer1] = [await agentCounters(c), await serverCounters(c)];
    const perJoin = (d: Counters | undefined, idle: Counters | undefined, key: string): number => {
      if (!d) return NaN;
      const idleShare = idle ? (idle[key]! / idleSpan) * joinSpan : 0;
      return round1((d[key]! - idleShare) / o.samples);
    };
    const joinAgents = counterDelta(joinAgents0, joinAgents1);
    const joinServer = counterDelta(joinServer0, joinServer1);

    // ---- CPU per remote event, at a low rate and without probes (their packets' softirq time would be
    //      charged to whichever process runs): connect, then disconnect, one endpoint at a time
    let remoteCpu = 0;
    let remoteResolverCpu = 0;
    let remoteOwnCpu = 0;
    let remoteEvents = 0;
    const remoteSamples: number[] = [];
    const remoteOwnSamples: number[] = [];
    const perAgentRemote = new Map<string, { cpu: number; events: number }>(hosts.map((h) => [h.node, { cpu: 0, events: 0 }]));
    const localCpu: number[] = [];
    // Each event's window is compared with a window of the same length just before it in which nothing
    // happens (periodic work — lease renewals, the 30 s drift repair — falls into either alike).
    let windowMs = 2 * SETTLE_MS;
    const event = async (host: ClusterHost, act: () => Promise<void>): Promise<void> => {
      const null0 = snapshotCpu(c);
      await sleep(windowMs);
      const null1 = snapshotCpu(c);
      const cpu0 = snapshotCpu(c);
      await act();
      await sleep(SETTLE_MS);
      const cpu1 = snapshotCpu(c);
      windowMs = cpu1.at - cpu0.at;
      const quiet = (node: string): number => (cpuDelta(null0, null1, node) * (cpu1.at - cpu0.at)) / (null1.at - null0.at);
      const quietResolver = (node: string): number => (resolverDelta(null0, null1, node) * (cpu1.at - cpu0.at)) / (null1.at - null0.at);
      const quietOwn = (node: string): number => (ownDelta(null0, null1, node) * (cpu1.at - cpu0.at)) / (null1.at - null0.at);
      for (const h of hosts) {
        if (h === host) continue;
        const x = cpuDelta(cpu0, cpu1, h.node) - quiet(h.node);
        const own = ownDelta(cpu0, cpu1, h.node) - quietOwn(h.node);
        remoteOwnCpu += own;
        remoteOwnSamples.push(own);
        remoteCpu += x;
        remoteResolverCpu += resolverDelta(cpu0, cpu1, h.node) - quietResolver(h.node);
        remoteEvents++;
        remoteSamples.push(x);
        const a = perAgentRemote.get(h.node)!;
        a.cpu += x;
        a.events++;
      }
      localCpu.push(cpuDelta(cpu0, cpu1, host.node) - quiet(host.node));
    };
    for (const ct of eventCts) {
      await event(ct.host, async () => {
        const ep = await connect(c, ct, 'scale');
        const deadline = Date.now() + PROGRAMMED_TIMEOUT_MS;
        await Promise.all(hosts.filter((h) => h !== ct.host).map((h) => monitors.get(h.node)!.waitFor(ep.ip, ep.mac, deadline)));
        eventEps.set(ct.short, ep);
      });
    }
    for (const ct of eventCts) {
      await event(ct.host, async () => {
        await apiOk(c, ct.host, 'DELETE', `/v1/networks/scale/endpoints/${eventEps.get(ct.short)!.id}`);
        await sleep(SETTLE_MS); // removal: no monitor wait; the window is long enough for every agent
      });
    }
    const maxAgentCpu = Math.max(...[...perAgentRemote.values()].filter((a) => a.events > 0).map((a) => a.cpu / a.events));
    progress(`  events: ${eventCts.length * 2} at a low rate; other agents spent ${round2(remoteCpu / remoteEvents)} ms CPU per event (the largest per agent ${round2(maxAgentCpu)} ms)`);

    // ---- churn on `side`: what agents without an endpoint there pay
    const nonMembers = hosts.filter((h) => !sideHosts.includes(h));
    const churn0 = snapshotCpu(c);
    for (let k = 0; k < o.samples; k++) {
      const ep = await connect(c, churnCts[0]!, 'side');
      await apiOk(c, sideHosts[0]!, 'DELETE', `/v1/networks/side/endpoints/${ep.id}`);
    }
    await sleep(SETTLE_MS);
    const churn1 = snapshotCpu(c);
    // the same length of nothing happening, right after
    const still0 = snapshotCpu(c);
    await sleep(churn1.at - churn0.at);
    const still1 = snapshotCpu(c);
    const sideEvents = 2 * o.samples;
    const nonMemberCpu =
      nonMembers.reduce((s, h) => s + cpuDelta(churn0, churn1, h.node) - (cpuDelta(still0, still1, h.node) * (churn1.at - churn0.at)) / (still1.at - still0.at), 0) /
      (nonMembers.length * sideEvents);
    progress(`  side churn: ${sideEvents} events; agents without a side endpoint spent ${round2(nonMemberCpu)} ms CPU per event`);

    // ---- burst
    progress(`  burst: ${o.burst} connects at once`);
    const [burstAgents0, burstServer0] = [await agentCounters(c), await serverCounters(c)];
    const burst0 = snapshotCpu(c);
    const tb0 = Date.now();
    connectRetries.burst = 0;
    // A connect that still fails after its retries is counted and named, and the others are measured:
    // one refused connect must not throw away the whole case's figures (the target is missed all the same).
    const burstFailures: string[] = [];
    const attempts = await Promise.all(
      burstCts.map(async (ct) => {
        try {
          return { ct, ep: await connectRetrying(c, ct, 'scale', 'burst'), returned: Date.now() };
        } catch (err) {
          burstFailures.push(`${ct.short} on ${ct.host.node}: ${(err as Error).message}`);
          return undefined;
        }
      }),
    );
    const burstEps = attempts.filter((a): a is NonNullable<typeof a> => a !== undefined);
    const connectsMs = Date.now() - tb0;
    if (burstFailures.length > 0) {
      progress(`  burst: ${burstFailures.length} of ${o.burst} connects failed after their retries:`);
      for (const f of burstFailures) progress(`    ${f}`);
    }
    if (burstEps.length === 0) throw new Error(`every burst connect failed: ${burstFailures.slice(0, 3).join(' | ')}`);
    const deadline = Date.now() + PROGRAMMED_TIMEOUT_MS;
    const everywhere = await Promise.all(
      burstEps.map(async ({ ct, ep }) => {
        const ts = await Promise.all(hosts.filter((h) => h !== ct.host).map((h) => monitors.get(h.node)!.waitFor(ep.ip, ep.mac, deadline)));
        if (ts.some((t) => t === undefined)) throw new Error(`burst endpoint ${ct.short} (${ep.ip}) not programmed everywhere after ${PROGRAMMED_TIMEOUT_MS} ms`);
        return Math.max(...(ts as number[]));
      }),
    );
    const burstTotalMs = Math.max(...everywhere) - tb0;
    const burstJoin = burstEps.map((b, i) => Math.max(0, everywhere[i]! - b.returned));
    await sleep(SETTLE_MS);
    const burst1 = snapshotCpu(c);
    const burstCpu = hosts.reduce((s, h) => s + busy(burst0, burst1, h.node), 0) / (burstEps.length * (n - 1));
    const burstResolverCpu =
      hosts.reduce((s, h) => s + resolverDelta(burst0, burst1, h.node) - (resolverDelta(idle0, idle1, h.node) / idleSpan) * (burst1.at - burst0.at), 0) / (burstEps.length * (n - 1));
    const [burstAgents1, burstServer1] = [await agentCounters(c), await serverCounters(c)];
    const burstAgents = counterDelta(burstAgents0, burstAgents1);
    const burstServer = counterDelta(burstServer0, burstServer1);
    const pingers = [hosts[1]!, hosts[Math.floor(n / 2)]!, hosts[n - 1]!].slice(0, BURST_PING_OBSERVERS);
    let unreachable = 0;
    for (const h of pingers) {
      const targets = burstEps.filter((b) => b.ct.host !== h).map((b) => b.ep.ip);
      const lost = await c.unreachableFrom(observers.get(h.node)!.ct, targets, 2);
      unreachable += lost.length;
      // which, and whether the kernel of the pinging host has them (to tell a lost ping on a loaded machine from a missing entry)
      if (lost.length > 0) {
        const peers = await c.kernelPeers(h, scale.id);
        for (const ip of lost) {
          const ep = burstEps.find((b) => b.ep.ip === ip)!;
          progress(`    ${ep.ct.short} (${ip}, on ${ep.ct.host.node}) did not answer ${h.node}'s ping; ${h.node}'s kernel ${peers.neigh.some((n) => n.ip === ip) ? 'has' : 'lacks'} its neighbour entry`);
        }
      }
    }
    progress(`  burst: connects returned after ${connectsMs} ms, all ${burstEps.length} programmed everywhere after ${burstTotalMs} ms; ${unreachable} unreachable in ${pingers.length} × ping; ${burstFailures.length} failed`);

    const rss = hosts.map((h) => c.agentRssMib(h)).filter((x): x is number => x !== undefined);
    const rssAnon = hosts.map((h) => rssAnonMib(h.agent?.child.pid)).filter((x): x is number => x !== undefined);
    const childRss = hosts.map((h) => childrenRssMib(h.agent?.child.pid));
    const resolverRss = [...resolvers.values()].map((pid) => rssMib(pid)).filter((x): x is number => x !== undefined);
    const row: Record<string, number | string> = {
      suite: 'scale',
      agents: o.label,
      backend,
      hosts: n,
      endpoints: expected,
      net_visible_p50_ms: round1(percentile(visible, 50)),
      net_visible_p99_ms: round1(percentile(visible, 99)),
      join_reachable_p50_ms: round1(percentile(reachable, 50)),
      join_reachable_p99_ms: round1(percentile(reachable, 99)),
      join_programmed_p50_ms: round1(percentile(programmed, 50)),
      join_programmed_p99_ms: round1(percentile(programmed, 99)),
      probe_floor_p50_ms: round1(percentile(floor, 50)),
      probe_floor_p99_ms: round1(percentile(floor, 99)),
      join_connect_p50_ms: round1(percentile(connectMs, 50)),
      burst: o.burst,
      burst_connects_ms: connectsMs,
      burst_total_ms: Math.round(burstTotalMs),
      burst_programmed_p50_ms: round1(percentile(burstJoin, 50)),
      burst_programmed_p99_ms: round1(percentile(burstJoin, 99)),
      burst_unreachable: unreachable,
      burst_connect_retries: connectRetries.burst,
      fill_connect_retries: connectRetries.fill,
      burst_failed_connects: burstFailures.length,
      agent_rss_mib: round1(Math.max(...rss)),
      agent_rss_mean_mib: round1(rss.reduce((a, b) => a + b, 0) / rss.length),
      agent_rss_anon_mib: round1(Math.max(...rssAnon)),
      agent_children_rss_mib: round1(Math.max(...childRss)),
      agent_cpu_ms_per_event: round2(remoteCpu / remoteEvents),
      agent_cpu_ms_per_event_p50: round2(percentile(remoteSamples, 50)),
      agent_cpu_ms_per_event_max: round2(maxAgentCpu),
      agent_own_cpu_ms_per_event: round2(remoteOwnCpu / remoteEvents),
      agent_own_cpu_ms_per_event_p50: round2(percentile(remoteOwnSamples, 50)),
      agent_cpu_ms_per_burst_event: round2(burstCpu),
      agent_cpu_ms_per_fill_event: round2(fillCpuPerEvent),
      dns: o.dns,
      store_opts: o.storeOpts.join(' ') || 'none',
      resolver_rss_mib: resolverRss.length > 0 ? round1(Math.max(...resolverRss)) : NaN,
      resolver_cpu_ms_per_event: resolvers.size > 0 ? round2(remoteResolverCpu / remoteEvents) : NaN,
      resolver_cpu_ms_per_burst_event: resolvers.size > 0 ? round2(burstResolverCpu) : NaN,
      nonmember_cpu_ms_per_event: round2(nonMemberCpu),
      local_connect_cpu_ms: round1(percentile(localCpu, 50)),
      agent_idle_cpu_ms_per_s: round1(idleCpuPerS),
      agent_own_idle_cpu_ms_per_s: round1(idleOwnPerS),
      resolver_idle_cpu_ms_per_s: round1(idleResolverPerS),
      store_ops_per_join: joinAgents ? round1(perJoin(joinAgents, idleAgentRate, 'reads') + perJoin(joinAgents, idleAgentRate, 'writes')) : round1(perJoin(joinServer, idleServerRate, 'reads') + perJoin(joinServer, idleServerRate, 'writes')),
      store_reads_per_join: perJoin(joinAgents, idleAgentRate, 'reads'),
      store_writes_per_join: perJoin(joinAgents, idleAgentRate, 'writes'),
      store_watch_events_per_join: perJoin(joinAgents, idleAgentRate, 'watchEvents'),
      server_reads_per_join: perJoin(joinServer, idleServerRate, 'reads'),
      server_writes_per_join: perJoin(joinServer, idleServerRate, 'writes'),
      server_watch_events_per_join: perJoin(joinServer, idleServerRate, 'watchEvents'),
      burst_writes_per_connect: round1((burstAgents ?? burstServer)?.writes !== undefined ? (burstAgents ?? burstServer)!.writes! / o.burst : NaN),
      burst_reads_per_connect: round1((burstAgents ?? burstServer)?.reads !== undefined ? (burstAgents ?? burstServer)!.reads! / o.burst : NaN),
      fill_ms: fillMs,
      samples: o.samples,
      server_nice: o.serverNice,
      poll_ms: pollMs,
      load1_start: loadStart,
      load1_end: load1(),
    };
    return { row };
  } finally {
    for (const p of probers) p.stop();
    for (const m of monitors.values()) m.stop();
    progress('  tearing down');
    await c.teardown();
    if (profDir) {
      for (const f of readdirSafe(profDir)) if (f.endsWith('.cpuprofile')) progress(`  CPU profile of h${o.cpuProfHost}: ${join(profDir, f)}`);
    }
  }
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    progress('the scale benchmark needs root (network namespaces)');
    process.exit(2);
  }
  const bundle = await agentBundle(o.bundle);
  const rows: Record<string, number | string>[] = [];
  for (const backend of o.backends) {
    for (const hosts of o.hosts) {
      if (o.compare) {
        const { row } = await benchCase({ ...o, label: 'before' }, backend, hosts, o.compare);
        rows.push(row);
        progress(JSON.stringify(row));
      }
      const { row } = await benchCase(o, backend, hosts, bundle);
      rows.push(row);
      progress(JSON.stringify(row));
    }
  }
  printRows(rows, o.json, {
    title: `scale: one real agent per simulated host, ${o.perHost} endpoints per host on one network; p50/p99 (nearest rank) of ${o.samples} samples after a warm-up`,
    transpose: true,
    columns: [
      'agents', 'backend', 'hosts', 'endpoints', 'net_visible_p50_ms', 'net_visible_p99_ms', 'join_connect_p50_ms', 'join_reachable_p50_ms', 'join_reachable_p99_ms',
      'probe_floor_p50_ms', 'probe_floor_p99_ms', 'join_programmed_p50_ms', 'join_programmed_p99_ms', 'burst', 'burst_connects_ms', 'burst_total_ms',
      'burst_programmed_p50_ms', 'burst_programmed_p99_ms', 'burst_unreachable', 'burst_connect_retries', 'burst_failed_connects', 'fill_connect_retries', 'agent_rss_mib', 'agent_rss_mean_mib', 'agent_rss_anon_mib', 'agent_children_rss_mib',
      'agent_cpu_ms_per_event', 'agent_cpu_ms_per_event_p50', 'agent_cpu_ms_per_event_max', 'agent_own_cpu_ms_per_event', 'agent_own_cpu_ms_per_event_p50', 'agent_cpu_ms_per_burst_event', 'agent_cpu_ms_per_fill_event', 'nonmember_cpu_ms_per_event',
      'dns', 'resolver_rss_mib', 'resolver_cpu_ms_per_event', 'resolver_cpu_ms_per_burst_event',
      'local_connect_cpu_ms', 'agent_idle_cpu_ms_per_s', 'agent_own_idle_cpu_ms_per_s', 'resolver_idle_cpu_ms_per_s', 'store_ops_per_join', 'store_reads_per_join', 'store_writes_per_join', 'store_watch_events_per_join',
      'server_reads_per_join', 'server_writes_per_join', 'server_watch_events_per_join', 'burst_reads_per_connect', 'burst_writes_per_connect', 'fill_ms',
      'load1_start', 'load1_end',
    ],
    notes: [
      'net_visible: network create returned → listed by every agent (polled every poll_ms); join_*: connect returned → the new endpoint answers a ping from every',
      'other host (reachable; probe_floor: the same probes to an endpoint already reachable, i.e. what the measurement itself takes) / its neighbour and FDB entries',
      "are in every other host's kernel (programmed, from `ip monitor`; 0 = before connect returned). burst_total: first of the burst issued → all programmed",
      'everywhere. agent_cpu_*: CPU ms (the agent, the ip/bridge processes it ran and its live batch processes) minus its idle rate, per agent per remote event',
      '(measured without probes; burst and fill include the local connects); nonmember: agents without an endpoint on a network, per event on it;',
      'store_*: summed over every agent per connect (agent counters), server_*: the same from the KV server (etcd: Range / Txn+Put+DeleteRange RPCs, events sent).',
      'Targets at 100 hosts × 20: reachable p99 ≤ 1 s, burst ≤ 10 s, net_visible p99 ≤ 300 ms, RSS ≤ 120 MiB, ≤ 6 writes per connect, ≤ 2 ms CPU per remote event.',
    ],
  });
}

runBench(main);
