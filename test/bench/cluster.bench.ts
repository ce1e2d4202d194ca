/**
 * `npm run bench -- cluster [--json] [--backends local,etcd] [--hosts 3,10] [--reps N] [--tsx]` (root).
 *
 * Agents run from the bundle as a deployment runs it (`npm run build` → dist/kvnet, rebuilt here), or
 * with `--tsx` from the TypeScript sources through tsx, as the tests do (≈ 30–50 MiB more RSS).
 *
 * For each backend × host count: a cluster of simulated hosts with one real agent each (the harness of
 * the multi-host tests), then, after one warm-up of each kind:
 * - net_visible: from `POST /v1/networks` (what `kvnet network create` calls) returning on one host to
 *   the network being in `GET /v1/networks` of every host (each agent answers from its own watched view;
 *   every host is polled every {@link POLL_MS}); the creating host rotates;
 * - ep_reachable: from `POST /v1/networks/N/endpoints` (`kvnet network connect`) returning to the new
 *   container answering a ping from an observer container on every other host. Each observer runs
 *   `ping -D -i 0.01` from right after the connect returns; the figure is the latest first-reply time
 *   over the observers. The observers' and new containers' ARP retransmit time is 10 ms (instead of
 *   1 s), so a lookup made before the peer was programmed does not quantise the result to seconds;
 * - agent_rss_mib: the largest VmRSS among the agents at the end (agent_rss_mean_mib: the mean).
 * p50/p99 are nearest-rank over `--reps` samples. With --json: one object per case on stdout, nothing
 * else there (progress goes to stderr).
 */

import { spawn } from 'node:child_process';
import { Cluster, sleep, type ClusterBackend, type ClusterHost, type Container, type Endpoint, type Network } from '../support/cluster.ts';
import { join } from 'node:path';
import { REPO_ROOT, run, waitFor } from '../support/process.ts';
import { printRows, runBench } from './report.ts';

const DEFAULT_BACKENDS: ClusterBackend[] = ['local', 'etcd'];
const DEFAULT_HOSTS = [3, 10];
const DEFAULT_REPS = 20;
const POLL_MS = 5;
const VISIBLE_TIMEOUT_MS = 30_000;
const REACHABLE_TIMEOUT_MS = 30_000;
const PING_INTERVAL_S = '0.01';

interface Options {
  json: boolean;
  tsx: boolean;
  backends: ClusterBackend[];
  hosts: number[];
  reps: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, tsx: false, backends: DEFAULT_BACKENDS, hosts: DEFAULT_HOSTS, reps: DEFAULT_REPS };
  const usage = 'usage: cluster [--json] [--backends local,etcd,consul,zookeeper] [--hosts 3,10] [--reps N] [--tsx]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--tsx') o.tsx = true;
    else if (a === '--backends') o.backends = String(argv[++i]).split(',') as ClusterBackend[];
    else if (a === '--hosts') o.hosts = String(argv[++i]).split(',').map(Number);
    else if (a === '--reps') o.reps = Number(argv[++i]);
    else if (a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; ${usage}`);
  }
  for (const b of o.backends) if (!['local', 'etcd', 'consul', 'zookeeper'].includes(b)) throw new Error(`unknown backend ${b}; ${usage}`);
  if (o.hosts.some((n) => !Number.isInteger(n) || n < 2 || n > 35)) throw new Error('--hosts must be integers in 2…35');
  if (!Number.isInteger(o.reps) || o.reps < 1) throw new Error('--reps must be a positive integer');
  return o;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const round1 = (x: number): number => Math.round(x * 10) / 10;
const progress = (msg: string): void => void process.stderr.write(`${msg}\n`);

async function apiOk<T>(c: Cluster, host: ClusterHost, method: string, path: string, body?: unknown): Promise<T> {
  const r = await c.api(host, method, path, body);
  if (r.status < 200 || r.status >= 300) throw new Error(`${method} ${path} on ${host.node}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

/** ms from `t0` until every host lists network `name`. */
async function timeVisible(c: Cluster, name: string, t0: number): Promise<number> {
  const seen = await Promise.all(
    c.hosts.map(async (h) => {
      for (;;) {
        const nets = await apiOk<Network[]>(c, h, 'GET', '/v1/networks');
        if (nets.some((n) => n.name === name)) return Date.now();
        if (Date.now() - t0 > VISIBLE_TIMEOUT_MS) throw new Error(`${name} not listed on ${h.node} after ${VISIBLE_TIMEOUT_MS} ms`);
        await sleep(POLL_MS);
      }
    }),
  );
  return Math.max(...seen) - t0;
}

/** Faster ARP retries in a container namespace (applies to interfaces created afterwards, too). */
/**
 * 10 ms ARP retries on a container's interface. Namespaces other than the initial one have no
 * `neigh/default` or `neigh/all` keys, so it must be the interface's own key, once it exists.
 */
async function fastArp(c: Cluster, ct: Container, ifname: string): Promise<void> {
  const r = await c.exec(ct.name, 'sysctl', '-qw', `net.ipv4.neigh.${ifname}.retrans_time_ms=10`);
  if (r.code !== 0) throw new Error(`ARP retransmit time on ${ifname} in ${ct.name}: ${r.stderr.trim()}`);
}

/** Time (ms since epoch) of the first reply from `ip` seen by a `ping -D` stream from `fromNs`. */
function firstReply(fromNs: string, ip: string, deadline: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--net=/run/netns/${fromNs}`, 'ping', '-D', '-n', '-i', PING_INTERVAL_S, '-W', '1', ip], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let buf = '';
    let done = false;
    const finish = (err: Error | undefined, at?: number): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      if (err) reject(err);
      else resolve(at!);
    };
    const timer = setTimeout(() => finish(new Error(`${ip} not answering from ${fromNs}`)), Math.max(0, deadline - Date.now()));
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=\d+ ttl=/m.exec(buf);
      if (m) finish(undefined, Number(m[1]) * 1000);
    });
    child.on('error', (err) => finish(err));
  });
}

async function benchCase(backend: ClusterBackend, hosts: number, reps: number): Promise<Record<string, number | string>> {
  progress(`cluster bench: ${backend}, ${hosts} hosts: building the cluster`);
  const c = await Cluster.create({ backend, hosts, ttl: '10s' });
  try {
    // ---- network visibility
    const visible: number[] = [];
    for (let rep = 0; rep <= reps; rep++) {
      const host = c.hosts[rep % hosts]!;
      const name = `bn${rep}`;
      const t0 = Date.now();
      await apiOk(c, host, 'POST', '/v1/networks', { name, subnet: `10.${100 + Math.floor(rep / 200)}.${rep % 200}.0/24` });
      const t1 = Date.now();
      const ms = await timeVisible(c, name, t1);
      if (rep > 0) visible.push(ms); // rep 0 is the warm-up
      progress(`  net ${name} on ${host.node}: create ${t1 - t0} ms, listed everywhere ${ms} ms after${rep === 0 ? ' (warm-up)' : ''}`);
    }
    for (let rep = 0; rep <= reps; rep++) await apiOk(c, c.hosts[0]!, 'DELETE', `/v1/networks/bn${rep}`);

    // ---- endpoint reachability
    await apiOk(c, c.hosts[0]!, 'POST', '/v1/networks', { name: 'bench', subnet: '10.99.0.0/16' });
    await timeVisible(c, 'bench', Date.now());
    const observers: { ct: Container; ep: Endpoint }[] = [];
    for (const h of c.hosts) {
      const ct = await c.addContainer(h, `o${h.index}`);
      const ep = await apiOk<Endpoint>(c, h, 'POST', '/v1/networks/bench/endpoints', { netns: ct.path, name: ct.short });
      await fastArp(c, ct, ep.ifname ?? 'eth0');
      observers.push({ ct, ep });
    }
    // Observers reach each other before measuring.
    for (const o of observers) {
      for (const p of observers) {
        if (o !== p) await waitFor(`${o.ct.short} → ${p.ep.ip}`, () => c.ping(o.ct, p.ep.ip), REACHABLE_TIMEOUT_MS, 50);
      }
    }
    const reachable: number[] = [];
    for (let rep = 0; rep <= reps; rep++) {
      const host = c.hosts[rep % hosts]!;
      const ct = await c.addContainer(host, `n${rep}`);
      const ep = await apiOk<Endpoint>(c, host, 'POST', '/v1/networks/bench/endpoints', { netns: ct.path, name: ct.short });
      const t1 = Date.now();
      await fastArp(c, ct, ep.ifname ?? 'eth0');
      const others = observers.filter((o) => o.ct.host !== host);
      const firsts = await Promise.all(others.map((o) => firstReply(o.ct.name, ep.ip, t1 + REACHABLE_TIMEOUT_MS)));
      const ms = Math.max(0, Math.max(...firsts) - t1);
      if (rep > 0) reachable.push(ms);
      progress(`  endpoint ${ct.short} on ${host.node}: pingable from ${others.length} other hosts ${Math.round(ms)} ms after connect returned${rep === 0 ? ' (warm-up)' : ''}`);
    }

    const rss = c.hosts.map((h) => c.agentRssMib(h)).filter((x): x is number => x !== undefined);
    return {
      suite: 'cluster',
      backend,
      hosts,
      net_visible_p50_ms: round1(percentile(visible, 50)),
      net_visible_p99_ms: round1(percentile(visible, 99)),
      ep_reachable_p50_ms: round1(percentile(reachable, 50)),
      ep_reachable_p99_ms: round1(percentile(reachable, 99)),
      agent_rss_mib: round1(Math.max(...rss)),
      agent_rss_mean_mib: round1(rss.reduce((a, b) => a + b, 0) / rss.length),
      agent_runtime: process.env.KVNET_AGENT_BUNDLE ? 'bundle' : 'tsx',
      reps,
    };
  } finally {
    await c.teardown();
  }
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    progress('the cluster benchmark needs root (network namespaces)');
    process.exit(2);
  }
  if (!options.tsx) {
    // dist/ (not a temp dir): the bundle resolves its external dependencies from the repo's node_modules.
    const bundle = join(REPO_ROOT, 'dist', 'kvnet.mjs');
    await run(process.execPath, [join(REPO_ROOT, 'scripts', 'build.mjs'), bundle]);
    process.env.KVNET_AGENT_BUNDLE = bundle;
  }
  const results: Record<string, number | string>[] = [];
  for (const backend of options.backends) {
    for (const hosts of options.hosts) {
      const row = await benchCase(backend, hosts, options.reps);
      results.push(row);
      progress(JSON.stringify(row));
    }
  }
  printRows(results, options.json, {
    title: `cluster: simulated hosts with one agent each; ${options.reps} samples per figure after a warm-up (nearest-rank percentiles)`,
    columns: ['backend', 'hosts', 'net_visible_p50_ms', 'net_visible_p99_ms', 'ep_reachable_p50_ms', 'ep_reachable_p99_ms', 'agent_rss_mib'],
    width: (c) => (c === 'backend' ? 10 : 21),
    notes: [
      '(net_visible: network create returned → listed by every agent; ep_reachable: connect returned → pingable from every other host;',
      ' agent_rss_mib: largest agent RSS at the end. Targets at 10 hosts: 100 ms, 200 ms p99, 100 MiB.)',
    ],
  });
}

runBench(main);
