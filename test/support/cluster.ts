/**
 * A kvnet cluster on simulated hosts: N host namespaces on one underlay (see `sim-hosts.ts`), one KV
 * store, and one real `kvnet agent` process per host, as the multi-host scenarios, the demo and the
 * cluster benchmark use it.
 *
 * ```ts
 * const cluster = await Cluster.create({ backend: 'etcd', hosts: 3, ttl: '3s', outside: true });
 * try {
 *   const [h1, h2] = cluster.hosts;
 *   await cluster.kvnetOk(h1, 'network', 'create', '--subnet', '10.91.1.0/24', 'net1');
 *   const c1 = await cluster.addContainer(h1, 'c1');
 *   const ep = await cluster.connect(c1, 'net1');          // `kvnet network connect` on c1's host
 *   await cluster.ping(c2, ep.ip);                          // → boolean
 * } finally {
 *   await cluster.teardown();                               // idempotent; also runs at process exit
 * }
 * ```
 *
 * Layout (every kernel name starts with the run id `R` = `runId()`, so `sim.destroy()` sweeps it all):
 * - `Ru`: the underlay namespace (bridge `ul0`); `Rh1`…`RhN`: hosts at 198.18.0.i/15; `Rx`: the "outside"
 *   namespace at 198.19.255.254 when `outside` is set;
 * - `Rkv`: the KV server's namespace at {@link KV_ADDRESS}/15 on the same underlay (server backends only;
 *   the embedded store is one SQLite file, `<run dir>/store.db`, opened by every agent);
 * - host i's agent runs with `--name-prefix R<i in base 36>`, so its overlay namespaces are `R<i>-<network id>`
 *   (for more than 35 hosts `R` has four characters and the index two);
 * - containers made by {@link Cluster.addContainer} are namespaces `R<name>`.
 *
 * Per-host files (socket, state dir, agent log) live in a temp dir `/tmp/kvnet-cluster-R-*` that is
 * removed with the rest. Teardown: agents SIGTERM (then SIGKILL), every namespace of the run deleted, the
 * KV server stopped and its data deleted, the run dir removed; process.ts and sim-hosts.ts also do it at
 * process exit and on SIGINT/SIGTERM, so a failed or interrupted run leaves nothing behind.
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EndpointView, NetworkView } from '../../packages/agent/src/network-service.ts';
import { unixRequest } from '../../packages/agent/src/unix-http.ts';
import { resolverSocketFor } from '../../packages/agent/src/config.ts';
import { stopResolver } from '../../packages/agent/src/names/resolver-control.ts';
import { startServer, type KvServer, type ServerBackend, type ServerOptions } from './kv-servers.ts';
import { randomInt } from 'node:crypto';
import { makeTempDir, removeTempDir, run as runCommand, runId, startProcess, REPO_ROOT, type ManagedProcess, type RunResult } from './process.ts';
import { attachNamespace, createSimNetwork, MAX_SIM_HOSTS, type SimContainer, type SimHost, type SimNetwork } from './sim-hosts.ts';
import { rssMib } from './proc-stats.ts';

export type ClusterBackend = 'local' | ServerBackend;
export const CLUSTER_BACKENDS: readonly ClusterBackend[] = ['local', 'etcd', 'consul', 'zookeeper'];

/** The KV server's underlay address (inside 198.18.0.0/15, away from hosts and the outside namespace). */
export const KV_ADDRESS = '198.19.0.1';
/** The `kvnet` CLI entry point. */
export const CLI_MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');
/**
 * How agents are run: from the TypeScript sources through tsx (default), or, with
 * `KVNET_AGENT_BUNDLE=path/to/kvnet.mjs` (made by `npm run build`), from the bundle a deployment runs.
 */
/**
 * The Node flags `dist/kvnet` (written by scripts/build.mjs) runs the bundle with; `KVNET_TEST_NODE_FLAGS`
 * (space-separated) replaces them, to compare flags in a benchmark (docs/scale.md: the semi-space size).
 */
export function agentEntry(): string[] {
  const bundle = process.env.KVNET_AGENT_BUNDLE;
  if (bundle) {
    if (!existsSync(bundle)) throw new Error(`KVNET_AGENT_BUNDLE=${bundle} does not exist: run npm run build`);
    // read at each start: a benchmark may give some agents other flags (events.bench.ts --before-env)
    const flags = (process.env.KVNET_TEST_NODE_FLAGS ?? '--max-semi-space-size=1').split(' ').filter(Boolean);
    return [...flags, bundle];
  }
  return ['--import', 'tsx', CLI_MAIN];
}
/** The key prefix on server backends. */
export const STORE_PREFIX = 'kvnet';
/** Host indexes in one base-36 character after a 5-character run id (`--name-prefix` is at most 6 characters). */
const MAX_HOSTS_SHORT_ID = 35;
/** Larger clusters use a 4-character run id and two base-36 characters per host. */
export const MAX_CLUSTER_HOSTS = Math.min(36 * 36 - 1, MAX_SIM_HOSTS);

const NETNS_DIR = '/run/netns';
const COMMAND_TIMEOUT_MS = 60_000;
const AGENT_READY_TIMEOUT_MS = 90_000;
const AGENT_STOP_GRACE_MS = 10_000;
const DEFAULT_TTL = '3s';
/** libnetwork's neighbour table thresholds (what the data plane sets on a real host). */
const NEIGH_THRESHOLDS: readonly [string, number][] = [
  ['gc_thresh1', 8192],
  ['gc_thresh2', 49152],
  ['gc_thresh3', 65536],
];
const SQLITE_LOCKER = join(REPO_ROOT, 'test/cluster/sqlite-lock.ts');
const STORE_TOOL = join(REPO_ROOT, 'test/cluster/store-tool.ts');

export interface ClusterOptions {
  readonly backend: ClusterBackend;
  readonly hosts: number;
  /** Agent `--ttl` (node record lease). Default 3s. */
  readonly ttl?: string;
  /** Per-host `--ttl`, overriding {@link ttl} where it returns a value (node names `h1`…). */
  readonly ttlFor?: (node: string) => string | undefined;
  /** Also build the outside namespace (egress target). */
  readonly outside?: boolean;
  /** MTU of the underlay links (sim-hosts.ts; default 1500). */
  readonly underlayMtu?: number;
  /** Give hosts (and the outside namespace) IPv6 underlay addresses too (2001:2::/64), so the host has IPv6 to give. */
  readonly ipv6?: boolean;
  /** Agents advertise their IPv6 underlay address (an IPv6 underlay: VXLAN over IPv6); needs `ipv6`. */
  readonly advertiseIpv6?: boolean;
  /** Agent `--log-level`. Default `info`. */
  readonly logLevel?: string;
  /** `--cluster-store-opt` values for every agent (e.g. `kv.timeout=3000`). */
  readonly storeOpts?: readonly string[];
  /** More agent flags. */
  readonly agentArgs?: readonly string[];
  /** Start the agents (default true); otherwise call {@link Cluster.startAgent}. */
  readonly startAgents?: boolean;
  /**
   * Agents started at a time (default: all at once). Each wave waits for its agents' `agent ready`, so
   * a hundred agents on a small machine do not all list the store and program their kernels together.
   */
  readonly agentWave?: number;
  /** Node flags before the agent's entry for a host (e.g. `--cpu-prof` on one agent). */
  readonly nodeArgsFor?: (node: string) => readonly string[] | undefined;
  /** Options of the KV server (server backends), e.g. `prometheus` for Consul's cumulative counters. */
  readonly serverOptions?: Pick<ServerOptions, 'prometheus' | 'nice'>;
  /** Progress lines (default: none). */
  readonly progress?: (msg: string) => void;
}

export interface ClusterHost extends SimHost {
  /** The agent's `--node-name`: `h1`, `h2`, … */
  readonly node: string;
  /** The agent's `--name-prefix` (`<run id><index in base 36>`). */
  readonly namePrefix: string;
  readonly socket: string;
  readonly stateDir: string;
  readonly logFile: string;
  /** The running agent, if any. */
  agent: ManagedProcess | undefined;
  /** False once {@link Cluster.destroyHost} tore the host down. */
  alive: boolean;
}

export interface Container extends SimContainer {
  /** The short name given to addContainer (`c1`); the netns is `<run id>c1`. */
  readonly short: string;
  readonly host: ClusterHost;
}

/** What `kvnet network connect` prints and `inspect` lists (the local API's shapes). */
export type Endpoint = EndpointView;
export type Network = NetworkView;

export interface StoreSession {
  list(prefix?: string): Promise<{ key: string; value: string }[]>;
  delete(key: string): Promise<boolean>;
  /** Writes `value` (text without a newline) at `key`, unconditionally. */
  put(key: string, value: string): Promise<void>;
  close(): Promise<void>;
}

export interface ApiResponse {
  readonly status: number;
  readonly body: unknown;
}

/** One kernel peer entry on an overlay namespace's vxlan0. */
export interface KernelPeers {
  /** `ip neigh` entries on vxlan0: IP → MAC. */
  readonly neigh: { ip: string; mac: string }[];
  /** `bridge fdb` entries of vxlan0 with a remote destination: MAC → VTEP. */
  readonly fdb: { mac: string; dst: string }[];
  /** Whether the overlay namespace exists at all. */
  readonly exists: boolean;
}

export class Cluster {
  readonly id: string;
  readonly backend: ClusterBackend;
  readonly sim: SimNetwork;
  readonly hosts: ClusterHost[];
  readonly storeUrl: string;
  readonly runDir: string;
  readonly server: KvServer | undefined;
  private readonly options: ClusterOptions;
  private locker: ManagedProcess | undefined;
  private storeStopped = false;
  private torn = false;
  private readonly containers = new Map<string, Container>();

  private constructor(init: {
    id: string;
    sim: SimNetwork;
    hosts: ClusterHost[];
    storeUrl: string;
    runDir: string;
    server: KvServer | undefined;
    options: ClusterOptions;
  }) {
    this.id = init.id;
    this.backend = init.options.backend;
    this.sim = init.sim;
    this.hosts = init.hosts;
    this.storeUrl = init.storeUrl;
    this.runDir = init.runDir;
    this.server = init.server;
    this.options = init.options;
  }

  /** Builds hosts, the store and (by default) one agent per host; on any failure removes what it made. */
  static async create(options: ClusterOptions): Promise<Cluster> {
    if (process.getuid?.() !== 0) throw new Error('a simulated cluster needs root (network namespaces)');
    if (options.hosts < 1 || options.hosts > MAX_CLUSTER_HOSTS) throw new Error(`hosts must be 1…${MAX_CLUSTER_HOSTS}, not ${options.hosts}`);
    const progress = options.progress ?? ((): void => undefined);
    const raised = raiseNeighbourThresholds();
    if (raised) progress(raised);
    // A name prefix is at most 6 characters: the run id and the host index in base 36 must fit.
    const id = options.hosts > MAX_HOSTS_SHORT_ID ? wideRunId() : runId();
    const indexWidth = options.hosts > MAX_HOSTS_SHORT_ID ? 2 : 1;
    const runDir = makeTempDir(`cluster-${id}`);
    progress(`building ${options.hosts} simulated hosts (namespaces ${id}h1…${id}h${options.hosts}) on underlay ${id}u`);
    const sim = await createSimNetwork({
      hosts: options.hosts,
      prefix: id,
      outside: options.outside ?? false,
      ...(options.underlayMtu !== undefined ? { underlayMtu: options.underlayMtu } : {}),
      ...(options.ipv6 ? { ipv6: true } : {}),
    });
    let server: KvServer | undefined;
    let cluster: Cluster | undefined;
    try {
      let storeUrl: string;
      if (options.backend === 'local') {
        storeUrl = `local://${join(runDir, 'store.db')}`;
      } else {
        const kvNs = `${id}kv`;
        await attachNamespace(sim, kvNs, 'pkv', KV_ADDRESS);
        progress(`starting ${options.backend} in namespace ${kvNs} at ${KV_ADDRESS}`);
        server = await startServer(options.backend, { ...options.serverOptions, netns: kvNs, host: KV_ADDRESS });
        storeUrl = server.url(STORE_PREFIX);
      }
      const hosts: ClusterHost[] = sim.hosts.map((h) => {
        const dir = join(runDir, `h${h.index}`);
        mkdirSync(join(dir, 'state'), { recursive: true, mode: 0o700 });
        return {
          ...h,
          node: `h${h.index}`,
          namePrefix: `${id}${h.index.toString(36).padStart(indexWidth, '0')}`,
          socket: join(dir, 'kvnet.sock'),
          stateDir: join(dir, 'state'),
          logFile: join(dir, 'agent.log'),
          agent: undefined,
          alive: true,
        };
      });
      cluster = new Cluster({ id, sim, hosts, storeUrl, runDir, server, options });
      if (options.startAgents ?? true) {
        const wave = options.agentWave ?? hosts.length;
        progress(`starting ${hosts.length} agents (store ${storeUrl})${wave < hosts.length ? `, ${wave} at a time` : ''}`);
        for (let i = 0; i < hosts.length; i += wave) {
          await Promise.all(hosts.slice(i, i + wave).map((h) => cluster!.startAgent(h)));
          if (wave < hosts.length) progress(`  agents h1…h${Math.min(i + wave, hosts.length)} ready`);
        }
      }
      return cluster;
    } catch (err) {
      if (cluster) await cluster.teardown().catch(() => undefined);
      else {
        await server?.dispose().catch(() => undefined);
        await sim.destroy();
        removeTempDir(runDir);
      }
      throw err;
    }
  }

  host(node: string): ClusterHost {
    const h = this.hosts.find((x) => x.node === node);
    if (!h) throw new Error(`no host ${node}`);
    return h;
  }

  // ---------------------------------------------------------------- agents

  /** The agent command line for a host (after `node --import tsx CLI_MAIN`). */
  agentArgs(host: ClusterHost): string[] {
    return [
      'agent',
      '--cluster-store', this.storeUrl,
      ...(this.options.storeOpts ?? []).flatMap((o) => ['--cluster-store-opt', o]),
      '--cluster-advertise', this.options.advertiseIpv6 && host.address6 ? host.address6 : host.address,
      '--node-name', host.node,
      '--socket', host.socket,
      '--state-dir', host.stateDir,
      '--name-prefix', host.namePrefix,
      '--ttl', this.options.ttlFor?.(host.node) ?? this.options.ttl ?? DEFAULT_TTL,
      '--metrics-addr', '127.0.0.1:9473',
      '--log-level', this.options.logLevel ?? 'info',
      ...(this.options.agentArgs ?? []),
    ];
  }

  /** Starts the host's agent in its namespace and waits for its `agent ready` log line. */
  async startAgent(host: ClusterHost, timeoutMs = AGENT_READY_TIMEOUT_MS): Promise<void> {
    if (!host.alive) throw new Error(`${host.node} was destroyed`);
    if (!existsSync(CLI_MAIN)) throw new Error(`the kvnet CLI is missing: ${CLI_MAIN}`);
    if (host.agent && host.agent.child.exitCode === null && host.agent.child.signalCode === null) {
      throw new Error(`${host.node}'s agent is already running`);
    }
    const offset = existsSync(host.logFile) ? statSync(host.logFile).size : 0;
    const env = { ...process.env };
    for (const k of ['KVNET_CLUSTER_STORE', 'KVNET_CLUSTER_ADVERTISE', 'KVNET_NODE_NAME', 'KVNET_SOCKET']) delete env[k];
    const nodeArgs = this.options.nodeArgsFor?.(host.node) ?? [];
    const agent = startProcess(`agent-${host.node}`, process.execPath, [...nodeArgs, ...agentEntry(), ...this.agentArgs(host)], {
      netns: host.name,
      logFile: host.logFile,
      cwd: REPO_ROOT,
      env,
    });
    host.agent = agent;
    let exited: number | string | undefined;
    void agent.exited.then((c) => (exited = c));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const log = existsSync(host.logFile) ? readFileSync(host.logFile, 'utf8').slice(offset) : '';
      if (log.split('\n').some((line) => isReadyLine(line))) return;
      if (exited !== undefined) {
        throw new Error(`${host.node}'s agent exited (${exited}) before it was ready:\n${tail(log, 40)}`);
      }
      if (Date.now() > deadline) {
        await agent.kill();
        throw new Error(`${host.node}'s agent was not ready after ${timeoutMs} ms:\n${tail(log, 40)}`);
      }
      await sleep(100);
    }
  }

  /** SIGTERM; resolves with the exit code once the agent is gone (SIGKILL after a grace period). */
  async stopAgent(host: ClusterHost): Promise<number | string | undefined> {
    const agent = host.agent;
    if (!agent) return undefined;
    await agent.stop(AGENT_STOP_GRACE_MS);
    return agent.exited;
  }

  /** SIGKILL, as a crash. */
  async killAgent(host: ClusterHost): Promise<void> {
    await host.agent?.kill();
  }

  agentRunning(host: ClusterHost): boolean {
    const c = host.agent?.child;
    return !!c && c.exitCode === null && c.signalCode === null;
  }

  /** The agent's log (all runs of it). */
  agentLog(host: ClusterHost): string {
    return existsSync(host.logFile) ? readFileSync(host.logFile, 'utf8') : '';
  }

  /** The last lines of every agent's log, for failure messages. */
  diagnostics(lines = 30): string {
    return this.hosts
      .map((h) => `--- ${h.node} agent log (${h.logFile}) ---\n${tail(this.agentLog(h), lines)}`)
      .join('\n');
  }

  /** Resident set size of the host's agent in MiB (from /proc). */
  agentRssMib(host: ClusterHost): number | undefined {
    return rssMib(host.agent?.child.pid);
  }

  /**
   * Kills the host's agent (SIGKILL) and tears the host down as if the machine died: its namespace,
   * its containers and its overlay namespaces are deleted.
   */
  async destroyHost(host: ClusterHost): Promise<void> {
    await this.killAgent(host);
    host.alive = false;
    const doomed = readdirSafe(NETNS_DIR).filter(
      (ns) => ns === host.name || ns.startsWith(`${host.namePrefix}-`) || [...this.containers.values()].some((c) => c.host === host && c.name === ns),
    );
    for (const ns of doomed) await run('ip', ['netns', 'del', ns], { allowFailure: true });
    for (const [k, c] of this.containers) if (c.host === host) this.containers.delete(k);
  }

  // ---------------------------------------------------------------- the store

  /**
   * Makes the store unavailable: stops the KV server (data kept), or for the embedded store holds
   * SQLite's write lock from another process (reads still work, every write waits and fails).
   */
  async stopStore(): Promise<void> {
    if (this.storeStopped) return;
    this.storeStopped = true;
    if (this.server) {
      await this.server.stop();
      return;
    }
    const db = this.storeUrl.slice('local://'.length);
    const locker = startProcess('sqlite-locker', process.execPath, ['--import', 'tsx', SQLITE_LOCKER, db], {
      cwd: REPO_ROOT,
      logFile: join(this.runDir, 'locker.log'),
    });
    this.locker = locker;
    const deadline = Date.now() + 30_000;
    while (!locker.log().includes('locked')) {
      if (locker.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`could not lock the embedded store: ${locker.log()}`);
      }
      await sleep(50);
    }
  }

  /** Brings the store back (same address, same data). */
  async startStore(): Promise<void> {
    if (!this.storeStopped) return;
    if (this.server) await this.server.start();
    else {
      await this.locker?.kill();
      this.locker = undefined;
    }
    this.storeStopped = false;
  }

  /**
   * Runs `test/cluster/store-tool.ts` against the store, from inside a live host's namespace (a KV
   * server is reachable only over the underlay): `list PREFIX` prints `[{key, value}]`, `delete KEY`.
   */
  async storeTool(...args: string[]): Promise<RunResult> {
    const via = this.hosts.find((h) => h.alive);
    if (!via) throw new Error('no live host to reach the store from');
    return run('nsenter', [`--net=${NETNS_DIR}/${via.name}`, process.execPath, '--import', 'tsx', STORE_TOOL, this.storeUrl, ...args], {
      allowFailure: true,
    });
  }

  /** Every key in the store (values as text). */
  async storeEntries(): Promise<{ key: string; value: string }[]> {
    const r = await this.storeTool('list', '');
    if (r.code !== 0) throw new Error(`store-tool list failed: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as { key: string; value: string }[];
  }

  async storeDelete(key: string): Promise<void> {
    const r = await this.storeTool('delete', key);
    if (r.code !== 0) throw new Error(`store-tool delete ${key} failed: ${r.stderr.trim()}`);
  }

  /**
   * A store client kept open in a live host's namespace, for acting on the store within milliseconds
   * (a one-shot store-tool run costs seconds of start-up). Close it when done.
   */
  async storeSession(): Promise<StoreSession> {
    const via = this.hosts.find((h) => h.alive);
    if (!via) throw new Error('no live host to reach the store from');
    const child = spawn('nsenter', [`--net=${NETNS_DIR}/${via.name}`, process.execPath, '--import', 'tsx', STORE_TOOL, this.storeUrl, 'session'], {
      cwd: REPO_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const lines: string[] = [];
    const waiters: ((line: string | undefined) => void)[] = [];
    let buf = '';
    let closed = false;
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const w = waiters.shift();
        if (w) w(line);
        else lines.push(line);
      }
    });
    child.on('close', () => {
      closed = true;
      for (const w of waiters.splice(0)) w(undefined);
    });
    const next = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const l = lines.shift();
        if (l !== undefined) return resolve(l);
        if (closed) return reject(new Error(`store session ended: ${stderr.trim()}`));
        const timer = setTimeout(() => reject(new Error(`store session: no answer after ${COMMAND_TIMEOUT_MS} ms: ${stderr.trim()}`)), COMMAND_TIMEOUT_MS);
        waiters.push((line) => {
          clearTimeout(timer);
          if (line === undefined) reject(new Error(`store session ended: ${stderr.trim()}`));
          else resolve(line);
        });
      });
    const ready = await next();
    if (ready !== 'ready') throw new Error(`store session did not start: ${ready} ${stderr}`);
    const call = async (line: string): Promise<unknown> => {
      child.stdin.write(`${line}\n`);
      const answer = JSON.parse(await next()) as { ok: boolean; result?: unknown; error?: string };
      if (!answer.ok) throw new Error(`store session: ${line}: ${answer.error}`);
      return answer.result;
    };
    return {
      list: async (prefix = '') => (await call(`list ${prefix}`)) as { key: string; value: string }[],
      delete: async (key) => (await call(`delete ${key}`)) as boolean,
      put: async (key, value) => {
        if (value.includes('\n')) throw new Error(`store session: put ${key}: the value must be one line`);
        await call(`put ${key} ${value}`);
      },
      close: async () => {
        child.stdin.end();
        if (!closed) await new Promise<void>((r) => child.on('close', () => r()));
      },
    };
  }

  // ---------------------------------------------------------------- the CLI and the local API

  /** Runs `kvnet --socket <host's socket> ARGS…`; never rejects on a non-zero exit. */
  async kvnet(host: ClusterHost, ...args: string[]): Promise<RunResult> {
    return run(process.execPath, ['--import', 'tsx', CLI_MAIN, '--socket', host.socket, ...args], { allowFailure: true, cwd: REPO_ROOT });
  }

  /** Like {@link kvnet}, but rejects (with the command and its stderr) unless it exits 0; returns stdout. */
  async kvnetOk(host: ClusterHost, ...args: string[]): Promise<string> {
    const r = await this.kvnet(host, ...args);
    if (r.code !== 0) throw new Error(`kvnet ${args.join(' ')} on ${host.node} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout;
  }

  /** `kvnet network inspect NAME` on `host` → the Network, or undefined when the command fails. */
  async inspect(host: ClusterHost, network: string): Promise<Network | undefined> {
    const r = await this.kvnet(host, 'network', 'inspect', network);
    if (r.code !== 0) return undefined;
    const arr = JSON.parse(r.stdout) as Network[];
    return arr[0];
  }

  /** `kvnet network ls --format json` on `host`. */
  async networks(host: ClusterHost): Promise<Network[]> {
    return JSON.parse(await this.kvnetOk(host, 'network', 'ls', '--format', 'json')) as Network[];
  }

  /** `kvnet node ls --format json` on `host`. */
  async nodes(host: ClusterHost): Promise<{ name: string; advertise: string; version: string; startedAt: string }[]> {
    return JSON.parse(await this.kvnetOk(host, 'node', 'ls', '--format', 'json')) as { name: string; advertise: string; version: string; startedAt: string }[];
  }

  /** `kvnet network connect NET --netns <container> [--name] [--ip] [--ip6]` on the container's host. */
  async connect(container: Container, network: string, opts: { name?: string; ip?: string; ip6?: string } = {}): Promise<Endpoint> {
    const args = ['network', 'connect', network, '--netns', container.path, '--name', opts.name ?? container.short];
    if (opts.ip) args.push('--ip', opts.ip);
    if (opts.ip6) args.push('--ip6', opts.ip6);
    return JSON.parse(await this.kvnetOk(container.host, ...args)) as Endpoint;
  }

  /** One request to the host's local API (HTTP over its unix socket). */
  async api(host: ClusterHost, method: string, path: string, body?: unknown): Promise<ApiResponse> {
    const r = await unixRequest({ socketPath: host.socket, method, path, body, timeoutMs: COMMAND_TIMEOUT_MS });
    return { status: r.status, body: r.body };
  }

  // ---------------------------------------------------------------- containers and the datapath

  /** A container: namespace `<run id><name>`, associated with `host`. */
  async addContainer(host: ClusterHost, name: string): Promise<Container> {
    const c = await this.sim.addContainer(host, name);
    const container: Container = { ...c, host, short: name };
    this.containers.set(container.name, container);
    return container;
  }

  async removeContainer(container: Container): Promise<void> {
    await this.sim.removeContainer(container);
    this.containers.delete(container.name);
  }

  /** Runs a command in a namespace (a name under /run/netns); never rejects on a non-zero exit. */
  exec(ns: string, command: string, ...args: string[]): Promise<RunResult> {
    return run('nsenter', [`--net=${NETNS_DIR}/${ns}`, command, ...args], { allowFailure: true });
  }

  /** Whether `ip` answers a ping from the container within `waitS` seconds (default 1), `tries` times. */
  async ping(from: Container | string, ip: string, opts: { waitS?: number; tries?: number } = {}): Promise<boolean> {
    return this.sim.ping(typeof from === 'string' ? from : from.name, ip, opts);
  }

  /**
   * Pings every target from `from` at once (one ping each); returns the targets that did not answer.
   * The container's (dynamic) neighbour entries are flushed afterwards: the kernel counts them against
   * one machine-wide limit (gc_thresh3, 1024 by default, in the initial namespace, which agents in
   * simulated hosts cannot raise), and a full mesh of 60 containers would otherwise exhaust it.
   */
  async unreachableFrom(from: Container, targets: readonly string[], waitS = 1): Promise<string[]> {
    if (targets.length === 0) return [];
    const script =
      `for ip in ${targets.join(' ')}; do (ping -c 1 -W ${waitS} -n -q "$ip" >/dev/null 2>&1 || echo "$ip") & done; wait; ` +
      'ip neigh flush all >/dev/null 2>&1; true';
    const r = await this.exec(from.name, 'sh', '-c', script);
    return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean);
  }

  /** The overlay namespace of a network on a host: `<name prefix>-<network id>`. */
  overlayNetns(host: ClusterHost, networkId: string): string {
    return `${host.namePrefix}-${networkId}`;
  }

  /** What vxlan0 of the network's overlay namespace on `host` holds (empty when there is none). */
  async kernelPeers(host: ClusterHost, networkId: string): Promise<KernelPeers> {
    const ns = this.overlayNetns(host, networkId);
    if (!existsSync(join(NETNS_DIR, ns))) return { neigh: [], fdb: [], exists: false };
    const n = await run('ip', ['-n', ns, '-j', 'neigh', 'show', 'dev', 'vxlan0'], { allowFailure: true });
    const f = await run('bridge', ['-n', ns, '-j', 'fdb', 'show', 'dev', 'vxlan0'], { allowFailure: true });
    const neigh = parseJsonArray<{ dst?: string; lladdr?: string }>(n.stdout)
      .filter((e) => e.dst && e.lladdr)
      .map((e) => ({ ip: e.dst!, mac: e.lladdr!.toLowerCase() }));
    const fdb = parseJsonArray<{ mac?: string; dst?: string }>(f.stdout)
      .filter((e) => e.mac && e.dst)
      .map((e) => ({ mac: e.mac!.toLowerCase(), dst: e.dst! }));
    return { neigh, fdb, exists: true };
  }

  /** Permanent neighbour entries on a host's VXLAN device for a network (the peers its agent programmed); −1 when they cannot be read. */
  async programmedPeers(host: ClusterHost, networkId: string): Promise<number> {
    const r = await run('ip', ['-n', this.overlayNetns(host, networkId), 'neigh', 'show', 'dev', 'vxlan0', 'nud', 'permanent'], { allowFailure: true, timeoutMs: 30_000 });
    return r.code === 0 ? r.stdout.split('\n').filter((l) => l.trim()).length : -1;
  }

  /**
   * Each host's DNS resolver process (the names face's; started detached by the agent, it is still its
   * child): node → pid, found by the `--socket` path on its command line.
   */
  resolverPids(): Map<string, number> {
    const bySocket = new Map(this.hosts.map((h) => [resolverSocketFor(h.socket), h.node]));
    const out = new Map<string, number>();
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
        const i = argv.indexOf('--socket');
        const node = i >= 0 ? bySocket.get(argv[i + 1] ?? '') : undefined;
        if (node) out.set(node, Number(d));
      } catch {
        // gone
      }
    }
    return out;
  }

  /** Link names in a namespace (`ip -n NS link`), or undefined when the namespace does not exist. */
  async links(ns: string): Promise<{ ifname: string; alias?: string }[] | undefined> {
    if (!existsSync(join(NETNS_DIR, ns))) return undefined;
    const r = await run('ip', ['-n', ns, '-j', 'link', 'show'], { allowFailure: true });
    return parseJsonArray<{ ifname: string; ifalias?: string }>(r.stdout).map((l) => ({
      ifname: l.ifname,
      ...(l.ifalias ? { alias: l.ifalias } : {}),
    }));
  }

  /** The IPv4 addresses on `ifname` in a namespace. */
  async addresses(ns: string, ifname: string): Promise<string[]> {
    const r = await run('ip', ['-n', ns, '-j', '-4', 'addr', 'show', 'dev', ifname], { allowFailure: true });
    return parseJsonArray<{ addr_info?: { local: string }[] }>(r.stdout).flatMap((l) => (l.addr_info ?? []).map((a) => a.local));
  }

  /** The global IPv6 addresses on `ifname` in a namespace (link-local ones left out). */
  async addresses6(ns: string, ifname: string): Promise<string[]> {
    const r = await run('ip', ['-n', ns, '-j', '-6', 'addr', 'show', 'dev', ifname, 'scope', 'global'], { allowFailure: true });
    // iproute2 prints `{}` in addr_info for each address the scope filter leaves out
    return parseJsonArray<{ addr_info?: { local?: string }[] }>(r.stdout).flatMap((l) => (l.addr_info ?? []).flatMap((a) => (a.local ? [a.local] : [])));
  }

  /** The MTU of `ifname` in a namespace (undefined when there is no such interface). */
  async mtu(ns: string, ifname: string): Promise<number | undefined> {
    const r = await run('ip', ['-n', ns, '-j', 'link', 'show', 'dev', ifname], { allowFailure: true });
    return parseJsonArray<{ mtu?: number }>(r.stdout)[0]?.mtu;
  }

  /**
   * Best-effort cleanup of one network: disconnects the endpoints each live host owns, removes the
   * network, deletes the given containers. Never throws; returns what failed.
   */
  async cleanupNetwork(name: string, containers: readonly Container[] = []): Promise<string[]> {
    const problems: string[] = [];
    const live = this.hosts.find((h) => h.alive && this.agentRunning(h));
    if (live) {
      const net = await this.inspect(live, name);
      if (net) {
        for (const ep of net.endpoints) {
          const owner = this.hosts.find((h) => h.node === ep.node && h.alive && this.agentRunning(h));
          if (!owner) continue;
          const r = await this.kvnet(owner, 'network', 'disconnect', name, ep.name);
          if (r.code !== 0) problems.push(`disconnect ${name} ${ep.name} on ${owner.node}: ${r.stderr.trim()}`);
        }
        const r = await this.kvnet(live, 'network', 'rm', name);
        if (r.code !== 0) problems.push(`network rm ${name}: ${r.stderr.trim()}`);
      }
    }
    for (const c of containers) await this.removeContainer(c).catch((err: unknown) => problems.push(String(err)));
    return problems;
  }

  /** Stops everything and removes every namespace, process, server and file of this run. Idempotent. */
  async teardown(): Promise<void> {
    if (this.torn) return;
    this.torn = true;
    await Promise.all(this.hosts.map((h) => h.agent?.stop(AGENT_STOP_GRACE_MS).catch(() => undefined)));
    // An agent's stop leaves its resolver process answering (by design); the run takes it along.
    await Promise.all(this.hosts.map((h) => stopResolver(resolverSocketFor(h.socket)).catch(() => undefined)));
    await this.locker?.kill().catch(() => undefined);
    await this.sim.destroy();
    await this.server?.dispose().catch(() => undefined);
    removeTempDir(this.runDir);
  }
}

// -------------------------------------------------------------------- helpers

function isReadyLine(line: string): boolean {
  if (!line.includes('agent ready')) return false;
  try {
    return (JSON.parse(line) as { msg?: string }).msg === 'agent ready';
  } catch {
    return false;
  }
}


/** Thresholds this process raised, with the values they had before. */
const raisedThresholds = new Map<string, number>();
let restoreHookInstalled = false;

/** Puts back the neighbour table thresholds {@link raiseNeighbourThresholds} raised (it runs at exit by itself). */
export function restoreNeighbourThresholds(): void {
  for (const [file, value] of raisedThresholds) {
    try {
      writeFileSync(file, String(value));
    } catch {
      // not writable any more: nothing to do
    }
  }
  raisedThresholds.clear();
}

/**
 * What the agent does on a real host, done for the simulated ones: raise (never lower) the kernel's
 * neighbour table thresholds to libnetwork's values. They exist only in the initial namespace and count
 * the dynamic entries of every namespace on the machine together (1024 by default), so the containers
 * of a few simulated clusters exhaust them ("No buffer space available", failing pings). Returns a
 * message when it changed something; what it raised is put back when the process ends.
 */
export function raiseNeighbourThresholds(): string | undefined {
  const changed: string[] = [];
  for (const [key, want] of NEIGH_THRESHOLDS) {
    const file = `/proc/sys/net/ipv4/neigh/default/${key}`;
    try {
      const have = Number(readFileSync(file, 'utf8').trim());
      if (have < want) {
        writeFileSync(file, String(want));
        changed.push(`${key} ${have} → ${want}`);
        raisedThresholds.set(file, have);
      }
    } catch {
      // not writable here: leave it
    }
  }
  if (changed.length > 0 && !restoreHookInstalled) {
    restoreHookInstalled = true;
    // The thresholds are machine-wide: put back what this process raised when it ends (also on Ctrl-C,
    // whose handlers in process.ts and sim-hosts.ts end the process through process.exit).
    process.on('exit', restoreNeighbourThresholds);
  }
  return changed.length > 0 ? `raised the machine's neighbour table thresholds (net.ipv4.neigh.default.${changed.join(', ')})` : undefined;
}

/**
 * A 4-character run id for clusters of more than 35 hosts: three base-36 characters of the pid, then
 * one of g…z. `runId()`'s ids are five characters whose last two are hex digits, so neither kind of id
 * can start with the other, and a run's sweep of every namespace starting with its id never touches
 * another run's.
 */
function wideRunId(): string {
  return (process.pid % 46656).toString(36).padStart(3, '0') + 'ghijklmnopqrstuvwxyz'[randomInt(20)]!;
}

function parseJsonArray<T>(text: string): T[] {
  try {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? (v as T[]) : [];
  } catch {
    return [];
  }
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

export function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines - 1).join('\n');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** process.ts's `run` with this harness's default timeout ({@link COMMAND_TIMEOUT_MS}). */
export function run(
  command: string,
  args: string[],
  options: { allowFailure?: boolean; timeoutMs?: number; cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return runCommand(command, args, { ...options, timeoutMs: options.timeoutMs ?? COMMAND_TIMEOUT_MS });
}

/** Runs `fn` over `items` with at most `limit` at a time; results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * A continuous ping (`ping -i INTERVAL`) from a container, stopped with {@link PingStream.stop}.
 * `lost` counts the sequence numbers sent but never answered, except the last one still in flight
 * when the stream was stopped.
 */
export interface PingStream {
  readonly from: string;
  readonly to: string;
  stop(): Promise<PingResult>;
}

export interface PingResult {
  readonly from: string;
  readonly to: string;
  readonly transmitted: number;
  readonly received: number;
  /** Sequence numbers without a reply, excluding one still in flight at the stop. */
  readonly lost: number[];
  readonly output: string;
}

export function startPingStream(fromNs: string, to: string, intervalS = 0.1): PingStream {
  const child = spawn('nsenter', [`--net=${NETNS_DIR}/${fromNs}`, 'ping', '-D', '-n', '-i', String(intervalS), '-W', '1', to], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));
  return {
    from: fromNs,
    to,
    async stop() {
      // Let the last packet's reply arrive before interrupting.
      await sleep(300);
      child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await closed;
      clearTimeout(t);
      const replies = new Set<number>();
      for (const m of output.matchAll(/icmp_seq=(\d+) ttl=/g)) replies.add(Number(m[1]));
      const summary = /(\d+) packets transmitted, (\d+) received/.exec(output);
      const transmitted = summary ? Number(summary[1]) : 0;
      const received = summary ? Number(summary[2]) : replies.size;
      const lost: number[] = [];
      for (let seq = 1; seq < transmitted; seq++) if (!replies.has(seq)) lost.push(seq);
      return { from: fromNs, to, transmitted, received, lost, output };
    },
  };
}
