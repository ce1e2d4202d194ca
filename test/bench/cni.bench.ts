/**
 * `npm run bench -- cni [--json] [--samples N]` (root).
 *
 * The `kvnet` CNI plugin on two simulated hosts with real agents (run from the bundle, as a deployment
 * runs them; embedded store), and the standard `bridge` plugin (with `host-local`) as the reference, all
 * in one run, samples interleaved (the order alternating per repetition). Plugins are built and
 * installed by scripts/build.mjs and scripts/install-cni.sh; the agent bundle and the plugin live in
 * dist/.bench-cni-<id>/ (the bundle resolves its dependencies from the repository's node_modules).
 *
 * Per sample, after {@link WARMUP} warm-ups of each kind (`--samples`, default {@link DEFAULT_SAMPLES}):
 * - runtime `cnitool`, plugin `kvnet`: a fresh network namespace on h1; `cnitool add` with `CNI_ARGS
 *   IP=<fixed address>` and `cnitool del`, wall time of each (cnitool's own start-up, libcni and the
 *   plugin's start-up included); reachable: from `cnitool add` returning to the first ping reply the
 *   address gives an observer on h2;
 * - runtime `podman`, plugin `kvnet`: `podman run -d --network … --ip <fixed address>` and `podman rm -f`
 *   on h1. podman calls the plugin through a wrapper (`sh`: `date +%s%N`, the plugin, `date +%s%N`), so
 *   add/del are the plugin's own ADD and DEL as podman runs them (plus one `date` start-up, ≈1 ms);
 *   reachable: from the plugin's ADD returning to the observer's first reply; also run_p50_ms (`podman
 *   run -d`, CLI start to exit) and run_reachable_p50_ms (from `podman run -d` issued to the first reply —
 *   what the docker suite's reachable_p50_ms measures for `docker run -d`);
 * - runtime `cnitool`, plugin `bridge`: `cnitool add`/`del` of a bridge + host-local configuration in a
 *   fresh namespace on h1 (the reference ADD: no store, no other host);
 * - where kvnet's ADD time goes, in the cnitool row: agent_add_p50_ms / agent_del_p50_ms, the same ADD and
 *   DEL sent to the agent's local API directly (no process started: the agent's share — store, data plane,
 *   sandbox read), and plugin_start_p50_ms, the plugin answering VERSION (node's start-up and the bundle,
 *   no agent call).
 * reachable is signed: negative when the address answered the observer before ADD returned (the agent
 * plumbs the endpoint and the other host programs its peer while the ADD is still being answered).
 * The observer is a namespace on h2 attached with `kvnet network connect`; it runs iputils `ping -D -i
 * 0.01` to the address before the ADD, with 10 ms ARP retransmits on its interface, so a lookup made
 * before the peer existed does not quantise the figure to seconds (as in the docker suite).
 * p50/p90 are nearest-rank. Target (issue 17): kvnet ADD p50 ≤ 150 ms, plugin start-up included.
 * With --json: one object per line on stdout, nothing else there (progress goes to stderr).
 *
 * Everything carries the run id and is removed at the end, on failure, and on Ctrl-C (cluster.ts,
 * process.ts and sim-hosts.ts sweep at exit; podman's state lives in the run's temp dir).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, type ClusterHost } from '../support/cluster.ts';
import { unixRequest } from '../../packages/agent/src/unix-http.ts';
import { makeTempDir, REPO_ROOT, run, runId } from '../support/process.ts';
import { cnitool, installPlugin, missingCniTools, removeCniCache, startPodmanHost, STANDARD_PLUGINS, writeConflist, type PodmanHost } from '../cni/support.ts';

const DEFAULT_SAMPLES = 20;
const WARMUP = 2;
/** Sample addresses: cnitool .10…, podman .100… (so at most this many samples), the observer .250. */
const MAX_SAMPLES = 80;
const SUBNET_PREFIX = '10.97.0';
const OBSERVER_IP = `${SUBNET_PREFIX}.250`;
const BRIDGE_SUBNET = '10.98.0.0/16';
const PING_INTERVAL_S = '0.01';
const REACHABLE_TIMEOUT_MS = 30_000;

interface Options {
  json: boolean;
  samples: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, samples: DEFAULT_SAMPLES };
  const usage = 'usage: cni [--json] [--samples N]';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--samples') o.samples = Number(argv[++i]);
    else if (a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; ${usage}`);
  }
  if (!Number.isInteger(o.samples) || o.samples < 1 || o.samples > MAX_SAMPLES - WARMUP) throw new Error(`--samples must be an integer in 1…${MAX_SAMPLES - WARMUP}, not ${o.samples}`);
  return o;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}
const round1 = (x: number): number => Math.round(x * 10) / 10;
const progress = (msg: string): void => void process.stderr.write(`[bench cni] ${msg}\n`);

const livePingers = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of livePingers) p.kill('SIGKILL');
});

/** A `ping -D` stream from netns `ns` to `ip`; `first` resolves with the epoch ms of the first reply. */
function startPinger(ns: string, ip: string): { first: Promise<number>; stop: () => void } {
  const child = spawn('nsenter', [`--net=/run/netns/${ns}`, 'ping', '-D', '-n', '-i', PING_INTERVAL_S, '-W', '1', ip], { stdio: ['ignore', 'pipe', 'ignore'] });
  livePingers.add(child);
  let timer: NodeJS.Timeout | undefined;
  const stop = (): void => {
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    livePingers.delete(child);
  };
  const first = new Promise<number>((resolve, reject) => {
    let buf = '';
    timer = setTimeout(() => {
      stop();
      reject(new Error(`${ip} gave no ping reply to ${ns} within ${REACHABLE_TIMEOUT_MS} ms`));
    }, REACHABLE_TIMEOUT_MS);
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=\d+ ttl=/m.exec(buf);
      if (m) {
        stop();
        resolve(Number(m[1]) * 1000);
      }
    });
    child.on('exit', (code, sig) => reject(new Error(`the pinger to ${ip} exited (${code ?? sig}) before a reply`)));
  });
  first.catch(() => undefined);
  return { first, stop };
}

interface Samples {
  agentAdd: number[];
  agentDel: number[];
  start: number[];
  add: number[];
  del: number[];
  reachable: number[];
  run: number[];
  runReachable: number[];
}
const samples = (): Samples => ({ agentAdd: [], agentDel: [], start: [], add: [], del: [], reachable: [], run: [], runReachable: [] });

class Bench {
  readonly id = runId();
  readonly dir = join(REPO_ROOT, 'dist', `.bench-cni-${this.id}`);
  readonly tmp = makeTempDir(`bench-cni-${this.id}`);
  cluster: Cluster | undefined;
  podman: PodmanHost | undefined;
  readonly names: string[] = [];
  private torn = false;

  constructor() {
    process.on('exit', () => rmSync(this.dir, { recursive: true, force: true }));
  }

  async teardown(): Promise<void> {
    if (this.torn) return;
    this.torn = true;
    await this.podman?.stop().catch((err: unknown) => progress(`stopping podman: ${String(err)}`));
    await this.cluster?.teardown().catch((err: unknown) => progress(`cluster teardown: ${String(err)}`));
    removeCniCache(this.names);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A wrapper podman runs instead of the plugin: it logs `COMMAND CONTAINERID start_ns end_ns rc` around the real one. */
function writeTimingWrapper(dir: string, plugin: string, log: string): void {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'kvnet');
  writeFileSync(path, `#!/bin/sh\ns=$(date +%s%N)\n${plugin} "$@"\nrc=$?\ne=$(date +%s%N)\necho "$CNI_COMMAND $CNI_CONTAINERID $s $e $rc" >> ${log}\nexit $rc\n`);
  chmodSync(path, 0o755);
}

/** The last line of the timing log for `command` and `containerId`: [start ms, end ms]. */
function timed(log: string, command: string, containerId: string): [number, number] {
  const lines = readFileSync(log, 'utf8').trim().split('\n').reverse();
  const line = lines.find((l) => l.startsWith(`${command} ${containerId} `));
  if (!line) throw new Error(`no ${command} of ${containerId} in ${log}`);
  const [, , s, e, rc] = line.split(' ');
  if (rc !== '0') throw new Error(`the plugin's ${command} of ${containerId} exited ${rc}`);
  return [Number(s) / 1e6, Number(e) / 1e6];
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const missing = missingCniTools({ podman: true });
  if (missing.length > 0) throw new Error(`the cni benchmark needs: ${missing.join('; ')} (scripts/setup.sh installs them)`);
  const b = new Bench();
  const kv = { cnitool: samples(), podman: samples() };
  const bridge = samples();
  try {
    progress(`building and installing the plugin and the agent bundle into ${b.dir}`);
    const { binDir, plugin } = await installPlugin(b.dir);
    process.env.KVNET_AGENT_BUNDLE = join(b.dir, 'dist', 'kvnet.mjs');
    b.cluster = await Cluster.create({ backend: 'local', hosts: 2, progress });
    const cluster = b.cluster;
    const [h1, h2] = cluster.hosts as [ClusterHost, ClusterHost];
    const net = `bench${b.id}`;
    await cluster.kvnetOk(h1, 'network', 'create', '--subnet', `${SUBNET_PREFIX}.0/24`, net);
    const observer = await cluster.addContainer(h2, 'obs');
    await cluster.connect(observer, net, { ip: OBSERVER_IP });
    await run('nsenter', [`--net=${observer.path}`, 'sysctl', '-qw', 'net.ipv4.neigh.eth0.retrans_time_ms=10']);

    const confDir = join(b.tmp, 'net.d');
    const kvName = `kv${b.id}`;
    const brName = `br${b.id}`;
    b.names.push(kvName, brName);
    writeConflist(confDir, { name: kvName, kvnet: { network: net, socket: h1.socket } });
    writeFileSync(join(confDir, `${brName}.conflist`), JSON.stringify({
      cniVersion: '1.0.0', name: brName,
      plugins: [{ type: 'bridge', bridge: `br${b.id}`.slice(0, 15), isGateway: true, ipMasq: false, ipam: { type: 'host-local', subnet: BRIDGE_SUBNET, dataDir: join(b.tmp, 'host-local') } }],
    }));
    const wrapDir = join(b.tmp, 'wrapped');
    const timingLog = join(b.tmp, 'timing.log');
    writeTimingWrapper(wrapDir, plugin, timingLog);
    progress(`podman (CNI backend) on ${h1.name}, plugin through a timing wrapper`);
    b.podman = await startPodmanHost({ hostNs: h1.name, runId: b.id, pluginDirs: [wrapDir] });
    const p = b.podman;
    writeConflist(p.confDir, { name: kvName, kvnet: { network: net, socket: h1.socket } });

    const total = WARMUP + o.samples;
    for (let rep = 0; rep < total; rep++) {
      const warm = rep < WARMUP;
      const kinds = ['cnitool', 'podman', 'bridge', 'api'] as const;
      const order = rep % 2 === 0 ? kinds : [...kinds].reverse();
      for (const kind of order) {
        if (kind === 'cnitool') {
          const c = await cluster.addContainer(h1, `k${rep}`);
          const ip = `${SUBNET_PREFIX}.${10 + rep}`;
          const pinger = startPinger(observer.name, ip);
          const t0 = Date.now();
          const add = await cnitool(h1.name, binDir, confDir, 'add', kvName, c.path, { args: `IP=${ip}` });
          const t1 = Date.now();
          if (add.code !== 0) throw new Error(`cnitool add: ${add.stderr}`);
          const first = await pinger.first;
          const t2 = Date.now();
          const del = await cnitool(h1.name, binDir, confDir, 'del', kvName, c.path);
          const t3 = Date.now();
          if (del.code !== 0) throw new Error(`cnitool del: ${del.stderr}`);
          await cluster.removeContainer(c);
          if (!warm) {
            kv.cnitool.add.push(t1 - t0);
            kv.cnitool.del.push(t3 - t2);
            kv.cnitool.reachable.push(first - t1);
          }
          progress(`  cnitool/kvnet: add ${t1 - t0} ms, reachable from h2 ${Math.round(first - t1)} ms after, del ${t3 - t2} ms${warm ? ' (warm-up)' : ''}`);
        } else if (kind === 'podman') {
          const name = `p${rep}${b.id}`;
          const ip = `${SUBNET_PREFIX}.${100 + rep}`;
          const pinger = startPinger(observer.name, ip);
          const t0 = Date.now();
          const id = await p.podmanOk('run', '-d', '--name', name, '--network', kvName, '--ip', ip, p.image, 'sleep', '3600');
          const t1 = Date.now();
          const first = await pinger.first;
          const [addStart, addEnd] = timed(timingLog, 'ADD', id);
          const t2 = Date.now();
          await p.podmanOk('rm', '-f', '-t', '0', name);
          const t3 = Date.now();
          const [delStart, delEnd] = timed(timingLog, 'DEL', id);
          if (!warm) {
            kv.podman.add.push(addEnd - addStart);
            kv.podman.del.push(delEnd - delStart);
            kv.podman.reachable.push(first - addEnd);
            kv.podman.run.push(t1 - t0);
            kv.podman.runReachable.push(first - t0);
          }
          progress(
            `  podman/kvnet: run ${t1 - t0} ms (plugin ADD ${Math.round(addEnd - addStart)} ms), reachable from h2 ${Math.round(first - addEnd)} ms after ADD, ` +
              `rm ${t3 - t2} ms (plugin DEL ${Math.round(delEnd - delStart)} ms)${warm ? ' (warm-up)' : ''}`,
          );
        } else if (kind === 'api') {
          const c = await cluster.addContainer(h1, `a${rep}`);
          const attachment = { network: net, containerId: `api${rep}${b.id}`, ifname: 'eth0' };
          const t0 = Date.now();
          const add = await unixRequest({ socketPath: h1.socket, method: 'POST', path: '/v1/cni/attachments', body: { ...attachment, netns: c.path, netconf: kvName }, timeoutMs: 60_000 });
          const t1 = Date.now();
          if (add.status !== 201) throw new Error(`POST /v1/cni/attachments: ${add.status} ${add.text}`);
          const del = await unixRequest({ socketPath: h1.socket, method: 'DELETE', path: `/v1/cni/attachments?${new URLSearchParams(attachment).toString()}`, timeoutMs: 60_000 });
          const t2 = Date.now();
          if (del.status !== 204) throw new Error(`DELETE /v1/cni/attachments: ${del.status} ${del.text}`);
          const v0 = Date.now();
          const version = await run(plugin, [], { env: { CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}' });
          const v1 = Date.now();
          if (!version.stdout.includes('supportedVersions')) throw new Error(`VERSION: ${version.stdout}`);
          await cluster.removeContainer(c);
          if (!warm) {
            kv.cnitool.agentAdd.push(t1 - t0);
            kv.cnitool.agentDel.push(t2 - t1);
            kv.cnitool.start.push(v1 - v0);
          }
          progress(`  agent API: add ${t1 - t0} ms, del ${t2 - t1} ms; plugin VERSION ${v1 - v0} ms${warm ? ' (warm-up)' : ''}`);
        } else {
          const c = await cluster.addContainer(h1, `b${rep}`);
          const t0 = Date.now();
          const add = await cnitool(h1.name, binDir, confDir, 'add', brName, c.path);
          const t1 = Date.now();
          if (add.code !== 0) throw new Error(`cnitool add (bridge): ${add.stderr}`);
          const del = await cnitool(h1.name, binDir, confDir, 'del', brName, c.path);
          const t2 = Date.now();
          if (del.code !== 0) throw new Error(`cnitool del (bridge): ${del.stderr}`);
          await cluster.removeContainer(c);
          if (!warm) {
            bridge.add.push(t1 - t0);
            bridge.del.push(t2 - t1);
          }
          progress(`  cnitool/bridge: add ${t1 - t0} ms, del ${t2 - t1} ms${warm ? ' (warm-up)' : ''}`);
        }
      }
    }
    await cluster.kvnetOk(h2, 'network', 'disconnect', net, 'obs');
  } finally {
    progress('tearing down');
    await b.teardown();
  }
  const fig = (s: Samples) => ({
    add_p50_ms: round1(percentile(s.add, 50)),
    add_p90_ms: round1(percentile(s.add, 90)),
    del_p50_ms: round1(percentile(s.del, 50)),
    del_p90_ms: round1(percentile(s.del, 90)),
  });
  const results: Record<string, number | string>[] = [
    {
      suite: 'cni', runtime: 'cnitool', plugin: 'kvnet', hosts: 2, ...fig(kv.cnitool),
      reachable_p50_ms: round1(percentile(kv.cnitool.reachable, 50)), reachable_p90_ms: round1(percentile(kv.cnitool.reachable, 90)),
      agent_add_p50_ms: round1(percentile(kv.cnitool.agentAdd, 50)), agent_del_p50_ms: round1(percentile(kv.cnitool.agentDel, 50)), plugin_start_p50_ms: round1(percentile(kv.cnitool.start, 50)),
      samples: o.samples,
    },
    {
      suite: 'cni', runtime: 'podman', plugin: 'kvnet', hosts: 2, ...fig(kv.podman),
      reachable_p50_ms: round1(percentile(kv.podman.reachable, 50)), reachable_p90_ms: round1(percentile(kv.podman.reachable, 90)),
      run_p50_ms: round1(percentile(kv.podman.run, 50)), run_reachable_p50_ms: round1(percentile(kv.podman.runReachable, 50)), samples: o.samples,
    },
    { suite: 'cni', runtime: 'cnitool', plugin: 'bridge', hosts: 1, ...fig(bridge), samples: o.samples },
  ];
  if (o.json) {
    for (const r of results) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const cols = ['runtime', 'plugin', 'hosts', 'add_p50_ms', 'add_p90_ms', 'del_p50_ms', 'del_p90_ms', 'reachable_p50_ms', 'reachable_p90_ms', 'run_p50_ms', 'run_reachable_p50_ms'];
  const parts = ['agent_add_p50_ms', 'agent_del_p50_ms', 'plugin_start_p50_ms'];
  const width = (c: string): number => Math.max(c.length + 2, 9);
  const lines = [
    `cni: 2 simulated hosts, real agents (bundle), embedded store; p50/p90 (nearest rank) of ${o.samples} samples each after ${WARMUP} warm-ups`,
    cols.map((c) => c.padStart(width(c))).join(''),
    ...results.map((r) => cols.map((c) => String(r[c] ?? '-').padStart(width(c))).join('')),
    `kvnet's share (same run): ${parts.map((c) => `${c} ${results[0]![c]}`).join(', ')}`,
    '(cnitool: `cnitool add|del` wall time, plugin start-up included; podman: the plugin\'s ADD|DEL as podman runs it; reachable: ADD returned →',
    ' first ping reply from h2 (negative: it answered before ADD returned); run: `podman run -d`; run_reachable: `podman run -d` issued → first',
    ' reply from h2; agent_*: the same call on the local API, no process; plugin_start: the plugin answering VERSION. Target: kvnet ADD p50 ≤ 150 ms.)',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
