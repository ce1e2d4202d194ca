/**
 * `npm run bench -- docker [--json] [--networks N] [--containers N]` (root).
 *
 * kvnet as a Docker network + IPAM plugin side by side with Docker 20.10's built-in legacy KV overlay
 * (the "anchor", `dockerd --cluster-store etcd://…`), both in one invocation so the ratio means
 * something on a shared, noisy machine. One sim network of four hosts and one etcd (v2 API for the
 * anchor's libkv, v3 for kvnet) at {@link KV_ADDRESS}:
 * - builtin-overlay: dockerds on h1, h2 with `--cluster-store etcd://… --cluster-advertise eth0:2376`,
 *   networks made with `docker network create -d overlay`;
 * - kvnet: dockerds on h3, h4 without a cluster store, each with a real `kvnet agent --docker-plugin`
 *   (run from the bundle, as a deployment runs it), networks made with
 *   `docker network create -d kvnet --ipam-driver kvnet`; kvnet mirrors them into h4's dockerd itself.
 * The two implementations never share a host namespace (both use VXLAN UDP 4789 there). Their samples
 * are interleaved (the order alternating per repetition) so load drift hits both alike.
 *
 * Figures per implementation, medians (nearest rank) after one warm-up of each kind (`--networks`
 * networks, `--containers` containers per host):
 * - net_create_ms: `docker network create` on the first host, CLI start to exit;
 * - net_visible_ms: from that command returning to the second host's dockerd listing the network in
 *   `GET /networks` (the Engine API call `docker network ls` makes; polled every {@link POLL_MS} ms,
 *   so the CLI's start-up does not quantise the figure);
 * - run_p50_ms: `docker run -d --network NET --ip … busybox sleep 3600`, CLI start to exit, over
 *   `--containers` runs on each host (2 × N samples);
 * - reachable_p50_ms: from just before `docker run -d` is issued on the second host to the first reply
 *   its address gives an observer container on the first host. The observer runs iputils `ping -D -i
 *   0.01` in its network namespace from before the run; its ARP retransmit time is 10 ms (instead of 1
 *   s), so a lookup made before the peer existed does not quantise the result to seconds. `--ip` is
 *   what lets the pinger start before the address is handed out.
 * Also run_p90_ms and reachable_p90_ms (nearest rank): the anchor's reachability is bimodal — libnetwork's
 * overlay spreads endpoints by serf user events, which serf coalesces (UserCoalescePeriod 1 s,
 * UserQuiescentPeriod 50 ms in drivers/overlay/ov_serf.go), so some containers answer a few hundred ms
 * after the others — and the median alone hides which mode a run landed in.
 * A final `impl: "ratio"` object holds kvnet / builtin-overlay for each figure (the target for
 * run_p50_ms and reachable_p50_ms is ≤ 1.2; printed, not asserted). With --json: one object per line
 * on stdout, nothing else there (progress goes to stderr).
 *
 * Everything carries the run id (namespaces `<id>…`, containers and networks `…<id>`, images
 * `kvnetbb:<id>`, the bundle `dist/.bench-docker-<id>.mjs`) and is removed at the end, on failure, and
 * on Ctrl-C (process.ts, sim-hosts.ts and dockerd.ts sweep at exit).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { KV_ADDRESS, raiseNeighbourThresholds, STORE_PREFIX } from '../support/cluster.ts';
import { canRunDockerd, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { startServer, type KvServer } from '../support/kv-servers.ts';
import { makeTempDir, removeTempDir, REPO_ROOT, run, runId, startProcess, waitFor, type ManagedProcess } from '../support/process.ts';
import { attachNamespace, createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';

const DEFAULT_NETWORKS = 5;
const DEFAULT_CONTAINERS = 20;
/** At most this many containers per host: their fixed addresses must fit one /24 (see {@link containerIp}). */
const MAX_CONTAINERS = 80;
const POLL_MS = 5;
const VISIBLE_TIMEOUT_MS = 60_000;
/** The warm-up container waits longer: the anchor's nodes may still be finding each other (serf via the store). */
const WARMUP_REACHABLE_TIMEOUT_MS = 120_000;
const REACHABLE_TIMEOUT_MS = 60_000;
const AGENT_READY_TIMEOUT_MS = 90_000;
const AGENT_STOP_GRACE_MS = 10_000;
const PING_INTERVAL_S = '0.01';
/** Node flags of dist/kvnet (scripts/build.mjs). */
const BUNDLE_NODE_FLAGS = ['--max-semi-space-size=1'];

type ImplName = 'kvnet' | 'builtin-overlay';

interface Options {
  json: boolean;
  networks: number;
  containers: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, networks: DEFAULT_NETWORKS, containers: DEFAULT_CONTAINERS };
  const usage = 'usage: docker [--json] [--networks N] [--containers N]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--networks') o.networks = Number(argv[++i]);
    else if (a === '--containers') o.containers = Number(argv[++i]);
    else if (a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; ${usage}`);
  }
  if (!Number.isInteger(o.networks) || o.networks < 1 || o.networks > 100) throw new Error(`--networks must be an integer in 1…100, not ${o.networks}`);
  if (!Number.isInteger(o.containers) || o.containers < 1 || o.containers > MAX_CONTAINERS) {
    throw new Error(`--containers must be an integer in 1…${MAX_CONTAINERS}, not ${o.containers}`);
  }
  return o;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const round1 = (x: number): number => Math.round(x * 10) / 10;
const round2 = (x: number): number => Math.round(x * 100) / 100;
const progress = (msg: string): void => void process.stderr.write(`[bench docker] ${msg}\n`);

/** One implementation under test: two dockerds, how it creates networks, and its samples. */
interface Impl {
  readonly name: ImplName;
  /** Short tag in container and network names. */
  readonly tag: string;
  /** Second octet of its subnets (10.<octet>.<n>.0/24), distinct per implementation for readable logs. */
  readonly octet: number;
  readonly driverArgs: readonly string[];
  readonly d1: Dockerd;
  readonly d2: Dockerd;
  /** The network the container samples run on, and its observer on d1. */
  benchNet?: string;
  observerPid?: number;
  readonly samples: { create: number[]; visible: number[]; run: number[]; reachable: number[] };
}

/** Fixed container addresses in the bench network: the observer .250, first-host runs .10…, second-host runs .100…. */
function containerIp(impl: Impl, which: 'observer' | 'h1' | 'h2', rep = 0): string {
  const last = which === 'observer' ? 250 : which === 'h1' ? 10 + rep : 100 + rep;
  return `10.${impl.octet}.200.${last}`;
}

/** Names of the networks a dockerd's Engine API lists (`GET /networks`, what `docker network ls` calls). */
function engineNetworkNames(socket: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, method: 'GET', path: '/networks', timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode !== 200) return reject(new Error(`GET /networks on ${socket}: ${res.statusCode} ${text.slice(0, 300)}`));
        try {
          resolve((JSON.parse(text) as { Name: string }[]).map((n) => n.Name));
        } catch (err) {
          reject(new Error(`GET /networks on ${socket}: not JSON (${String(err)}): ${text.slice(0, 300)}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET /networks on ${socket}: no answer after 30 s`)));
    req.on('error', reject);
    req.end();
  });
}

/** ms from `t0` until `d` lists network `name`. */
async function timeListed(d: Dockerd, name: string, t0: number): Promise<number> {
  for (;;) {
    if ((await engineNetworkNames(d.socket)).includes(name)) return Date.now() - t0;
    if (Date.now() - t0 > VISIBLE_TIMEOUT_MS) throw new Error(`network ${name} not listed by dockerd on ${d.host.name} after ${VISIBLE_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** Pingers still running; killed at exit (also on Ctrl-C, where process.ts exits the process) so none outlives the run. */
const livePingers = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of livePingers) p.kill('SIGKILL');
});

/**
 * A `ping -D` stream from a container's network namespace (by its pid) to `ip`; `first` resolves with
 * the time (ms since epoch) of the first reply, or rejects at `deadline`. `stop()` ends the stream.
 */
function startPinger(pid: number, ip: string, deadline: number): { first: Promise<number>; stop: () => void } {
  const child = spawn('nsenter', [`--net=/proc/${pid}/ns/net`, 'ping', '-D', '-n', '-i', PING_INTERVAL_S, '-W', '1', ip], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  livePingers.add(child);
  let done = false;
  let timer: NodeJS.Timeout | undefined;
  const stop = (): void => {
    done = true;
    if (timer) clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    livePingers.delete(child);
  };
  const first = new Promise<number>((resolve, reject) => {
    let buf = '';
    const finish = (err: Error | undefined, at?: number): void => {
      if (done) return;
      stop();
      if (err) reject(err);
      else resolve(at!);
    };
    timer = setTimeout(() => finish(new Error(`${ip} gave no ping reply to the observer (pid ${pid}) in time`)), Math.max(0, deadline - Date.now()));
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=\d+ ttl=/m.exec(buf);
      if (m) finish(undefined, Number(m[1]) * 1000);
    });
    child.on('error', (err) => finish(err));
    child.on('exit', (code, sig) => finish(new Error(`the pinger to ${ip} from pid ${pid} exited (${code ?? sig}) before a reply`)));
  });
  first.catch(() => undefined); // handled by whoever awaits it; never an unhandled rejection
  return { first, stop };
}


/** Everything the run started, for teardown (idempotent, in dependency order). */
class Bench {
  readonly id = runId();
  readonly dir = makeTempDir(`bench-docker-${this.id}`);
  readonly bundle = join(REPO_ROOT, 'dist', `.bench-docker-${this.id}.mjs`);
  sim: SimNetwork | undefined;
  etcd: KvServer | undefined;
  dockerds: Dockerd[] = [];
  agents: ManagedProcess[] = [];
  impls: Impl[] = [];
  private torn = false;

  constructor() {
    // the bundle lives in dist/ (it resolves its dependencies from the repo's node_modules): remove it at exit too
    process.on('exit', () => this.removeBundle());
  }

  removeBundle(): void {
    for (const f of [this.bundle, `${this.bundle}.map`]) rmSync(f, { force: true });
  }

  async teardown(): Promise<void> {
    if (this.torn) return;
    this.torn = true;
    // containers first, then networks while the kvnet agents still answer the plugin calls
    await Promise.all(
      this.dockerds.map(async (d) => {
        const ids = (await d.docker('ps', '-aq')).stdout.split('\n').filter(Boolean);
        if (ids.length) await d.docker('rm', '-f', ...ids);
      }),
    ).catch((err: unknown) => progress(`removing containers: ${String(err)}`));
    for (const impl of this.impls) {
      const nets = (await impl.d1.docker('network', 'ls', '-q', '--filter', 'type=custom')).stdout.split('\n').filter(Boolean);
      for (const n of nets) {
        // the built-in overlay counts endpoints in its cluster store, which lags the container removal
        let r = await impl.d1.docker('network', 'rm', n);
        for (let i = 0; r.code !== 0 && /active endpoints/.test(r.stderr) && i < 20; i++) {
          await new Promise((resolve) => setTimeout(resolve, 500));
          r = await impl.d1.docker('network', 'rm', n);
        }
        if (r.code !== 0) progress(`docker network rm ${n} on ${impl.d1.host.name}: ${r.stderr.trim()}`);
      }
    }
    await Promise.all(this.dockerds.map((d) => d.stop().catch((err: unknown) => progress(`stopping dockerd on ${d.host.name}: ${String(err)}`))));
    await Promise.all(this.agents.map((a) => a.stop(AGENT_STOP_GRACE_MS).catch(() => undefined)));
    // agents leave their data plane in place by design; their namespaces carry the run id
    await this.sim?.destroy().catch(() => undefined);
    await this.etcd?.dispose().catch(() => undefined);
    removeTempDir(this.dir);
    this.removeBundle();
  }
}

async function startAgent(b: Bench, d: Dockerd, node: string, index: number): Promise<ManagedProcess> {
  const stateDir = join(b.dir, `state-${node}`);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const env = { ...process.env };
  for (const k of ['KVNET_CLUSTER_STORE', 'KVNET_CLUSTER_ADVERTISE', 'KVNET_NODE_NAME', 'KVNET_SOCKET']) delete env[k];
  const agent = startProcess(`agent-${b.id}-${node}`, process.execPath, [
    ...BUNDLE_NODE_FLAGS, b.bundle, 'agent',
    '--cluster-store', b.etcd!.url(`${STORE_PREFIX}${b.id}`),
    '--cluster-advertise', 'eth0', '--node-name', node, '--state-dir', stateDir,
    '--socket', join(b.dir, `${node}.sock`), '--ttl', '10s', '--name-prefix', `${b.id}${index}`,
    '--gateway-bridge', 'none', '--metrics-addr', 'off', '--log-level', 'info',
    '--docker-plugin', join(d.pluginDir, 'kvnet.sock'), '--docker-socket', d.socket,
  ], { netns: d.host.name, cwd: REPO_ROOT, env, logFile: join(b.dir, `agent-${node}.log`) });
  b.agents.push(agent);
  await waitFor(`the kvnet agent on ${d.host.name} to log "agent ready"`, () => {
    if (agent.child.exitCode !== null || agent.child.signalCode !== null) throw new Error(`agent exited: ${agent.log().slice(-2000)}`);
    return agent.log().includes('"msg":"agent ready"');
  }, AGENT_READY_TIMEOUT_MS, 100);
  return agent;
}

/** Builds hosts, etcd, four dockerds and two agents; the two implementations. */
async function setUp(b: Bench): Promise<void> {
  const raised = raiseNeighbourThresholds();
  if (raised) progress(raised);
  progress(`building 4 simulated hosts (namespaces ${b.id}h1…${b.id}h4) on underlay ${b.id}u`);
  b.sim = await createSimNetwork({ hosts: 4, prefix: b.id });
  const kvNs = `${b.id}kv`;
  await attachNamespace(b.sim, kvNs, 'pkv', KV_ADDRESS);
  progress(`starting etcd (v2 + v3 API) in ${kvNs} at ${KV_ADDRESS}`);
  b.etcd = await startServer('etcd', { enableV2: true, netns: kvNs, host: KV_ADDRESS });
  const [h1, h2, h3, h4] = b.sim.hosts as [typeof b.sim.hosts[0], typeof b.sim.hosts[0], typeof b.sim.hosts[0], typeof b.sim.hosts[0]];
  const anchorArgs = ['--cluster-store', `etcd://${b.etcd.host}:${b.etcd.port}`, '--cluster-advertise', 'eth0:2376'];
  progress('starting 4 dockerds (h1, h2: --cluster-store etcd; h3, h4: plain, with kvnet agents)');
  const settled = await Promise.allSettled([
    startDockerd({ host: h1, runId: b.id, extraArgs: anchorArgs }),
    startDockerd({ host: h2, runId: b.id, extraArgs: anchorArgs }),
    startDockerd({ host: h3, runId: b.id }),
    startDockerd({ host: h4, runId: b.id }),
  ]);
  for (const s of settled) if (s.status === 'fulfilled') b.dockerds.push(s.value);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  const [d1, d2, d3, d4] = b.dockerds as [Dockerd, Dockerd, Dockerd, Dockerd];
  progress('starting the kvnet agents on h3, h4');
  await Promise.all([startAgent(b, d3, 'h3', 3), startAgent(b, d4, 'h4', 4)]);
  const samples = (): Impl['samples'] => ({ create: [], visible: [], run: [], reachable: [] });
  b.impls = [
    { name: 'builtin-overlay', tag: 'ov', octet: 231, driverArgs: ['-d', 'overlay'], d1, d2, samples: samples() },
    { name: 'kvnet', tag: 'kv', octet: 232, driverArgs: ['-d', 'kvnet', '--ipam-driver', 'kvnet'], d1: d3, d2: d4, samples: samples() },
  ];
}

/** The implementations in this repetition's order (alternating, so neither always goes first). */
const ordered = (impls: Impl[], rep: number): Impl[] => (rep % 2 === 0 ? impls : [...impls].reverse());

async function measureNetworks(b: Bench, count: number): Promise<void> {
  for (let rep = 0; rep <= count; rep++) {
    for (const impl of ordered(b.impls, rep)) {
      const name = `${impl.tag}n${rep}${b.id}`;
      const t0 = Date.now();
      await impl.d1.dockerOk('network', 'create', ...impl.driverArgs, '--subnet', `10.${impl.octet}.${rep}.0/24`, name);
      const t1 = Date.now();
      const visible = await timeListed(impl.d2, name, t1);
      if (rep > 0) {
        impl.samples.create.push(t1 - t0);
        impl.samples.visible.push(visible);
      }
      progress(`  ${impl.name}: network ${name}: create ${t1 - t0} ms, listed on ${impl.d2.host.name} ${visible} ms after${rep === 0 ? ' (warm-up)' : ''}`);
    }
  }
  for (const impl of b.impls) {
    for (let rep = 0; rep <= count; rep++) {
      const name = `${impl.tag}n${rep}${b.id}`;
      await impl.d1.dockerOk('network', 'rm', name);
      await waitFor(`${name} gone from ${impl.d2.host.name}`, async () => !(await engineNetworkNames(impl.d2.socket)).includes(name), VISIBLE_TIMEOUT_MS, 100);
    }
  }
}

/** The bench network of each implementation, with an observer container on its first host. */
async function prepareContainerNetwork(b: Bench): Promise<void> {
  for (const impl of b.impls) {
    const net = `${impl.tag}b${b.id}`;
    await impl.d1.dockerOk('network', 'create', ...impl.driverArgs, '--subnet', `10.${impl.octet}.200.0/24`, net);
    await timeListed(impl.d2, net, Date.now());
    const observer = `${impl.tag}obs${b.id}`;
    await impl.d1.dockerOk('run', '-d', '--name', observer, '--network', net, '--ip', containerIp(impl, 'observer'), impl.d1.image, 'sleep', '3600');
    const pid = Number(await impl.d1.dockerOk('inspect', '-f', '{{.State.Pid}}', observer));
    if (!Number.isInteger(pid) || pid <= 1) throw new Error(`observer ${observer} on ${impl.d1.host.name} has no usable pid: ${pid}`);
    // 10 ms ARP retransmits on its interface (a namespace other than the initial one has no
    // neigh/default on this kernel, so the interface's own setting it is)
    await run('nsenter', [`--net=/proc/${pid}/ns/net`, 'sysctl', '-qw', 'net.ipv4.neigh.eth0.retrans_time_ms=10']);
    impl.benchNet = net;
    impl.observerPid = pid;
    progress(`  ${impl.name}: network ${net} with observer ${observer} (pid ${pid}) on ${impl.d1.host.name}`);
  }
}

async function measureContainers(b: Bench, count: number): Promise<void> {
  for (let rep = 0; rep <= count; rep++) {
    for (const impl of ordered(b.impls, rep)) {
      const warm = rep === 0;
      // a run on the first host: run time only
      const onFirst = `${impl.tag}a${rep}${b.id}`;
      let t0 = Date.now();
      await impl.d1.dockerOk('run', '-d', '--name', onFirst, '--network', impl.benchNet!, '--ip', containerIp(impl, 'h1', rep), impl.d1.image, 'sleep', '3600');
      const runFirst = Date.now() - t0;
      // a run on the second host: run time and reachability from the observer on the first
      const onSecond = `${impl.tag}b${rep}${b.id}`;
      const ip = containerIp(impl, 'h2', rep);
      const pinger = startPinger(impl.observerPid!, ip, Date.now() + (warm ? WARMUP_REACHABLE_TIMEOUT_MS : REACHABLE_TIMEOUT_MS));
      let runSecond: number;
      let reachable: number;
      try {
        t0 = Date.now();
        await impl.d2.dockerOk('run', '-d', '--name', onSecond, '--network', impl.benchNet!, '--ip', ip, impl.d2.image, 'sleep', '3600');
        runSecond = Date.now() - t0;
        reachable = Math.max(0, (await pinger.first) - t0);
      } finally {
        pinger.stop();
      }
      if (!warm) {
        impl.samples.run.push(runFirst, runSecond);
        impl.samples.reachable.push(reachable);
      }
      progress(
        `  ${impl.name}: run ${onFirst} on ${impl.d1.host.name} ${runFirst} ms, ${onSecond} on ${impl.d2.host.name} ${runSecond} ms, ` +
          `pingable from ${impl.d1.host.name} ${Math.round(reachable)} ms after its run started${warm ? ' (warm-up)' : ''}`,
      );
    }
  }
}

function resultOf(impl: Impl, o: Options): Record<string, number | string> {
  const s = impl.samples;
  return {
    suite: 'docker',
    impl: impl.name,
    hosts: 2,
    net_create_ms: round1(percentile(s.create, 50)),
    net_visible_ms: round1(percentile(s.visible, 50)),
    run_p50_ms: round1(percentile(s.run, 50)),
    reachable_p50_ms: round1(percentile(s.reachable, 50)),
    run_p90_ms: round1(percentile(s.run, 90)),
    reachable_p90_ms: round1(percentile(s.reachable, 90)),
    networks: o.networks,
    containers: o.containers,
  };
}

const FIGURES = ['net_create_ms', 'net_visible_ms', 'run_p50_ms', 'reachable_p50_ms', 'run_p90_ms', 'reachable_p90_ms'] as const;

function ratioOf(kvnet: Record<string, number | string>, anchor: Record<string, number | string>): Record<string, number | string> {
  const r: Record<string, number | string> = { suite: 'docker', impl: 'ratio', hosts: 2 };
  for (const f of FIGURES) r[f] = round2(Number(kvnet[f]) / Math.max(Number(anchor[f]), 0.1));
  return r;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('the docker benchmark needs root (network namespaces, dockerd)');
  if (!(await canRunDockerd())) throw new Error('the docker benchmark needs dockerd, docker, containerd, runc and a static /bin/busybox (scripts/setup.sh installs them)');
  const b = new Bench();
  let results: Record<string, number | string>[];
  try {
    progress(`building the agent bundle ${b.bundle}`);
    if (!existsSync(join(REPO_ROOT, 'dist'))) mkdirSync(join(REPO_ROOT, 'dist'));
    await run(process.execPath, [join(REPO_ROOT, 'scripts', 'build.mjs'), b.bundle]);
    await setUp(b);
    progress(`networks: ${options.networks} per implementation after a warm-up`);
    await measureNetworks(b, options.networks);
    progress(`containers: ${options.containers} per host and implementation after a warm-up`);
    await prepareContainerNetwork(b);
    await measureContainers(b, options.containers);
    const [anchor, kvnet] = [resultOf(b.impls[0]!, options), resultOf(b.impls[1]!, options)];
    results = [kvnet, anchor, ratioOf(kvnet, anchor)];
    for (const r of results) progress(JSON.stringify(r));
  } finally {
    progress('tearing down');
    await b.teardown();
  }
  if (options.json) {
    for (const r of results) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const cols = ['impl', 'hosts', ...FIGURES];
  const width = (c: string): number => (c === 'impl' ? 16 : c === 'hosts' ? 6 : Math.max(15, c.length + 2));
  const lines = [
    `docker: dockerd 20.10 on 2 simulated hosts per implementation, one etcd; p50/p90 (nearest rank) of ${options.networks} ` +
      `networks and ${options.containers} containers per host after a warm-up`,
    cols.map((c) => c.padStart(width(c))).join(''),
    ...results.map((r) => cols.map((c) => String(r[c]).padStart(width(c))).join('')),
    '(net_create: `docker network create` on h1; net_visible: create returned → listed by h2\'s dockerd; run: `docker run -d`',
    ' on either host; reachable: `docker run -d` on h2 issued → first ping reply to a container on h1.',
    ` ratio = kvnet / builtin-overlay; target for run_p50 and reachable_p50: ≤ 1.2, here ${results[2]!.run_p50_ms} and ${results[2]!.reachable_p50_ms}.)`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
