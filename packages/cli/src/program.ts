/**
 * The `kvnet` command line: `kvnet agent` runs the daemon in the foreground; every other command
 * talks to the local agent over its unix socket (`--socket`, env KVNET_SOCKET). Errors are printed
 * as `kvnet: <message>` on stderr; exit code 1 for failures, 2 for usage errors (unknown option,
 * missing argument, invalid flag value — also when the agent refuses a value as invalid input).
 *
 * Client commands load only this file, the unix-socket client, the agent's config and version
 * modules and commander; `kvnet agent` imports the agent itself when it runs (scripts/build.mjs puts
 * it in a separate chunk of the bundle), so a client command starts in tens of milliseconds.
 */

import { Command, CommanderError, Option } from '@commander-js/extra-typings';
import { hostname } from 'node:os';
import type { DoctorReport, EndpointView, NetworkView, NodeView } from '@kvnet/agent';
// Only the config module: client commands must not load the agent (store backends, data plane).
import {
  DEFAULT_DNS_ADDRESS,
  DEFAULT_GATEWAY_BRIDGE,
  DEFAULT_METRICS_ADDR,
  DEFAULT_NAME_PREFIX,
  DEFAULT_SOCKET,
  DEFAULT_STATE_DIR,
  DEFAULT_TTL_S,
  MAX_DEFAULT_MTU,
  MIN_DEFAULT_MTU,
  parseIntegerFlag,
  parseTtl,
  resolveAdvertise,
  resolverSocketFor,
  resolveStoreUrl,
  validateConfig,
} from '@kvnet/agent/config';
import { socketAnswers } from '@kvnet/agent/unix-http';
import { BUILD_INFO } from '@kvnet/agent/version';
import { parseDurationMs } from '@kvnet/store/duration';
import { ApiClient, ApiError } from './client.ts';
import { alignTabs, keyValue, labelMatches, matchesFilters, parseFilters, table } from './format.ts';
import { Template, TemplateError } from './template.ts';

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
/** Characters of an id in tables and `-q` output (Docker's), unless `--no-trunc`. */
const SHORT_ID_CHARS = 12;
/** `kvnet status --wait` without a duration waits this long. */
const DEFAULT_WAIT_MS = 90_000;
/** Pause between two status calls of `kvnet status --wait`. */
const WAIT_POLL_MS = 200;

export interface CliIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  /** Asks a yes/no question on the terminal (`network prune` without `-f`); absent: the answer is no. */
  readonly prompt?: (question: string) => Promise<string>;
}

/** Thrown by actions to end with a message and an exit code (1 unless given). */
export class CliExit extends Error {
  constructor(
    message: string,
    readonly exitCode = EXIT_FAILURE,
  ) {
    super(message);
  }
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** An integer flag value, or a usage error naming the flag and the value. */
function integerFlag(flag: string, text: string, min: number, max: number, what: string): number {
  try {
    return parseIntegerFlag(flag, text, min, max, what);
  } catch (err) {
    throw new CliExit((err as Error).message, EXIT_USAGE);
  }
}

/** One value as a string, several as a list (the local API takes both). */
const oneOrList = (values: readonly string[]): string | string[] => (values.length === 1 ? values[0]! : [...values]);

function kvMap(flag: string, values: readonly string[]): Record<string, string> | undefined {
  if (values.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const v of values) {
    try {
      const [k, val] = keyValue(flag, v);
      out[k] = val;
    } catch (err) {
      throw new CliExit((err as Error).message, EXIT_USAGE);
    }
  }
  return out;
}

/** Runs `fn`, turning its plain errors into usage errors (exit 2). */
function usage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new CliExit((err as Error).message, EXIT_USAGE);
  }
}

/**
 * A `--format` value: `table` / `json` (the built-in outputs), or a Go template (`{{.Name}}`, or
 * `table {{.ID}}\t{{.Name}}` with a header row). Parsed before the agent is asked anything.
 */
interface OutputFormat {
  readonly kind: 'table' | 'json' | 'template';
  readonly template?: Template;
  /** `table …` templates print a header row. */
  readonly header?: boolean;
}

function parseFormat(format: string | undefined, flag = '--format'): OutputFormat {
  if (format === undefined || format === 'table') return { kind: 'table' };
  if (format === 'json') return { kind: 'json' };
  const isTable = format.startsWith('table ');
  const body = isTable ? format.slice('table '.length).trimStart() : format;
  if (!body.includes('{{')) throw new CliExit(`invalid ${flag} "${format}": expected table, json or a Go template such as '{{.Name}}'`, EXIT_USAGE);
  try {
    return { kind: 'template', template: new Template(body), header: isTable };
  } catch (err) {
    throw new CliExit(`invalid ${flag} template: ${(err as Error).message}`, EXIT_USAGE);
  }
}

function render(template: Template, data: unknown, flag = '--format'): string {
  try {
    return template.render(data);
  } catch (err) {
    if (err instanceof TemplateError) throw new CliExit(`${flag} template: ${err.message}`, EXIT_USAGE);
    throw err;
  }
}

/** A list command's rows for templates, with the header names Docker prints for `table` templates. */
interface Listing<T> {
  readonly rows: readonly T[];
  readonly headers: Readonly<Record<string, string>>;
}

/** Prints a list: `-q` ids, a template (with a header row for `table …`), JSON, or the default table. */
function printList<T extends object>(
  io: CliIo,
  format: OutputFormat,
  listing: Listing<T>,
  opts: { quiet: boolean; id: (row: T) => string; json: () => unknown; defaultTable: () => string },
): void {
  if (opts.quiet) {
    io.out(listing.rows.map((r) => `${opts.id(r)}\n`).join(''));
    return;
  }
  if (format.kind === 'json') {
    io.out(JSON.stringify(opts.json(), null, 2) + '\n');
    return;
  }
  if (format.kind === 'table') {
    io.out(opts.defaultTable());
    return;
  }
  const lines = listing.rows.map((r) => render(format.template!, r));
  if (format.header) {
    const header = render(format.template!, headerRow(listing.headers));
    io.out(alignTabs([header, ...lines]));
  } else io.out(lines.map((l) => `${l}\n`).join(''));
}

/** What a `table` template's header row renders from: each field's column title. */
function headerRow(headers: Readonly<Record<string, string>>): Record<string, unknown> {
  const row: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(headers)) row[k] = v;
  row.Label = () => 'LABEL';
  return row;
}

const shortId = (id: string, noTrunc: boolean): string => (noTrunc ? id : id.slice(0, SHORT_ID_CHARS));

/** The fields `network ls --format` offers (Docker's, plus kvnet's VNI, Subnet, Gateway, Endpoints). */
function networkRow(n: NetworkView, noTrunc: boolean) {
  return {
    ID: shortId(n.id, noTrunc),
    Name: n.name,
    Driver: 'kvnet',
    Scope: 'global',
    VNI: n.vni,
    Subnet: n.subnet,
    Gateway: n.gateway,
    Endpoints: n.endpoints.length,
    Internal: n.internal,
    IPv6: false,
    Labels: Object.entries(n.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(','),
    CreatedAt: n.createdAt,
    Label: (key: unknown) => (n.labels ?? {})[String(key)] ?? '',
  };
}
const NETWORK_HEADERS = { ID: 'NETWORK ID', Name: 'NAME', Driver: 'DRIVER', Scope: 'SCOPE', VNI: 'VNI', Subnet: 'SUBNET', Gateway: 'GATEWAY', Endpoints: 'ENDPOINTS', Internal: 'INTERNAL', IPv6: 'IPV6', Labels: 'LABELS', CreatedAt: 'CREATED AT' };

interface EndpointRow extends EndpointView {
  readonly networkName: string;
}

function endpointRow(e: EndpointRow, noTrunc: boolean) {
  return { ID: shortId(e.id, noTrunc), Name: e.name, Network: e.networkName, NetworkID: shortId(e.network, noTrunc), Node: e.node, Address: e.address, IP: e.ip, MAC: e.mac, Netns: e.netns ?? '', Ifname: e.ifname ?? '' };
}
const ENDPOINT_HEADERS = { ID: 'ENDPOINT ID', Name: 'NAME', Network: 'NETWORK', NetworkID: 'NETWORK ID', Node: 'NODE', Address: 'ADDRESS', IP: 'IP', MAC: 'MAC', Netns: 'NETNS', Ifname: 'IFNAME' };

function nodeRow(n: NodeView) {
  return { Name: n.name, Advertise: n.advertise ?? '', State: n.state, Version: n.version ?? '', StartedAt: n.startedAt ?? '', Endpoints: n.endpoints, Self: n.self, Until: n.until ?? '', Probe: n.probe?.detail ?? '' };
}
const NODE_HEADERS = { Name: 'NAME', Advertise: 'ADVERTISE', State: 'STATE', Version: 'VERSION', StartedAt: 'STARTED', Endpoints: 'ENDPOINTS', Self: 'SELF', Until: 'UNTIL', Probe: 'LAST PROBE' };

/** `kvnet doctor`'s human output: one line per finding, what to do under each problem, a summary. */
export function formatDoctor(report: DoctorReport): string {
  const mark: Record<string, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', skip: 'skip' };
  const lines = [`kvnet doctor on node ${report.node} (${report.at}, ${report.durationMs} ms)`];
  for (const f of report.findings) {
    lines.push(`  ${mark[f.status] ?? f.status}  ${f.area.padEnd(12)}  ${f.summary}`);
    if (f.fix && (f.status === 'fail' || f.status === 'warn')) lines.push(`${' '.repeat(22)}→ ${f.fix}`);
  }
  lines.push(
    report.healthy
      ? `healthy${report.warnings ? ` (${report.warnings} warning${report.warnings > 1 ? 's' : ''})` : ''}`
      : `${report.problems} problem${report.problems > 1 ? 's' : ''}${report.warnings ? `, ${report.warnings} warning${report.warnings > 1 ? 's' : ''}` : ''}`,
  );
  return lines.join('\n') + '\n';
}

/** Builds the program; `io` receives all output (tests capture it). */
export function buildProgram(io: CliIo): Command<[], { socket: string }> {
  const program = new Command('kvnet')
    .description('One container network across many Linux hosts, backed by the KV store you already run')
    .addOption(new Option('--socket <path>', 'unix socket of the local agent').env('KVNET_SOCKET').default(DEFAULT_SOCKET))
    .version(`kvnet version ${BUILD_INFO.version}, build ${BUILD_INFO.commit}`, '-v, --version', 'print the version of this kvnet command')
    .configureOutput({
      writeOut: (s) => io.out(s),
      writeErr: (s) => io.err(s),
      outputError: (s, write) => write(`kvnet: ${s.replace(/^error: /, '')}`),
    })
    .exitOverride()
    .showSuggestionAfterError();

  const client = (cmd: { optsWithGlobals(): { socket?: string } }): ApiClient => new ApiClient(cmd.optsWithGlobals().socket ?? DEFAULT_SOCKET);
  const json = (v: unknown): void => io.out(JSON.stringify(v, null, 2) + '\n');
  const formatHelp = (what: string): string => `output: table, json, or a Go template over ${what} (e.g. '{{.Name}}', 'table {{.ID}}\\t{{.Name}}')`;

  // ---- agent ----
  program
    .command('agent')
    .description('run the per-host agent in the foreground (needs root)')
    .addOption(new Option('--cluster-store <url>', 'cluster store, the same on every host: consul://, etcd://, zk:// or local:///path (required, or --single-host)').env('KVNET_CLUSTER_STORE'))
    .option('--single-host', 'no cluster: run on the embedded store /var/lib/kvnet/store.db (this machine only)', false)
    .addOption(new Option('--cluster-store-opt <k=v>', 'store option, repeatable (kv.cacertfile, kv.certfile, kv.keyfile, kv.insecure, kv.token, kv.username, kv.password, kv.timeout=5s)').argParser(collect).default([] as string[]))
    .addOption(new Option('--cluster-advertise <iface|ip[:port]>', 'this host\'s underlay address (VTEP), as an interface or IPv4 address').env('KVNET_CLUSTER_ADVERTISE'))
    .addOption(new Option('--node-name <name>', 'node name, unique in the cluster (default: hostname)').env('KVNET_NODE_NAME'))
    .option('--state-dir <dir>', 'local state directory (node identity, egress addresses; one agent per directory)', DEFAULT_STATE_DIR)
    .option('--metrics-addr <host:port|off>', 'loopback listener for /metrics, /healthz, /readyz', DEFAULT_METRICS_ADDR)
    .option('--ttl <duration>', 'TTL of the node record (2s…10m); a dead node is noticed after about this long', `${DEFAULT_TTL_S}s`)
    .option('--name-prefix <prefix>', 'prefix of every kernel object this agent creates, [a-z0-9]{1,6}', DEFAULT_NAME_PREFIX)
    .option('--gateway-bridge <name|none>', 'bridge giving containers of non-internal networks a way out, or none', DEFAULT_GATEWAY_BRIDGE)
    .option('--docker-plugin <socket|off>', 'serve the Docker network + IPAM plugin "kvnet" on this socket (e.g. /run/docker/plugins/kvnet.sock)', 'off')
    .option('--docker-socket <socket|off>', 'the local dockerd\'s API socket (network names; kvnet networks mirrored into Docker)', '/var/run/docker.sock')
    .addOption(new Option('--docker-scope <scope>', 'scope the Docker plugin reports').choices(['local', 'global']).default('local'))
    .addOption(new Option('--docker-driver-name <name>', 'the name dockerd knows the plugin by: kvnet, or a managed plugin\'s reference such as kvnet:latest').env('KVNET_DOCKER_DRIVER_NAME').default('kvnet'))
    .option('--dns-address <ip|off>', 'the resolver address containers ask for names across hosts (link-local), or off', DEFAULT_DNS_ADDRESS)
    .option('--dns-upstream <ip[:port]>', 'upstream DNS server for other names, repeatable (default: the host\'s /etc/resolv.conf)', collect, [] as string[])
    .option('--dns-socket <path>', 'the resolver process\'s feed socket (default: beside --socket)')
    .option('--dns-resolver-unit <unit>', 'start the resolver with systemd-run as this unit, so it survives agent restarts under systemd')
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .option('--vxlan-port <port>', "the cluster's VXLAN UDP port: recorded by the first agent (default 4789); an agent given another port refuses to start")
    .option('--default-mtu <bytes>', "MTU of networks this agent creates without --mtu (default: the underlay interface's MTU - 50, or - 70 over IPv6)")
    .action(async (opts, cmd) => {
      if (!opts.clusterAdvertise) throw new CliExit('--cluster-advertise is required (or set KVNET_CLUSTER_ADVERTISE)', EXIT_USAGE);
      const ttlS = usage(() => parseTtl(opts.ttl));
      const storeUrl = usage(() => resolveStoreUrl(opts.clusterStore, opts.singleHost));
      const config = {
        storeUrl,
        storeOpts: opts.clusterStoreOpt,
        advertise: opts.clusterAdvertise,
        nodeName: opts.nodeName ?? hostname(),
        stateDir: opts.stateDir,
        socketPath: cmd.optsWithGlobals().socket,
        metricsAddr: opts.metricsAddr,
        ttlS,
        namePrefix: opts.namePrefix,
        gatewayBridge: opts.gatewayBridge,
        dockerPlugin: opts.dockerPlugin,
        dockerSocket: opts.dockerSocket,
        dockerScope: opts.dockerScope,
        dockerDriverName: opts.dockerDriverName,
        dnsAddress: opts.dnsAddress,
        dnsUpstreams: opts.dnsUpstream,
        ...(opts.dnsSocket ? { dnsSocket: opts.dnsSocket } : {}),
        ...(opts.dnsResolverUnit ? { dnsResolverUnit: opts.dnsResolverUnit } : {}),
        ...(opts.vxlanPort !== undefined ? { vxlanPort: integerFlag('--vxlan-port', opts.vxlanPort, 1, 65535, 'a UDP port number') } : {}),
        ...(opts.defaultMtu !== undefined ? { defaultMtu: integerFlag('--default-mtu', opts.defaultMtu, MIN_DEFAULT_MTU, MAX_DEFAULT_MTU, 'an MTU in bytes') } : {}),
      };
      const { parseStoreUrl, parseStoreOpts } = await import('@kvnet/store');
      usage(() => {
        validateConfig(config);
        resolveAdvertise(config.advertise);
        parseStoreUrl(config.storeUrl);
        parseStoreOpts(config.storeUrl, config.storeOpts);
      });
      const [{ Agent }, { pino }] = await Promise.all([import('@kvnet/agent'), import('pino')]);
      // Synchronous writes: the "agent ready" line must be on stdout the moment it is logged, and
      // the last lines must not be lost when the process exits. Errors of kvnet's own kinds (store
      // unreachable, …) are logged without their stack: they are expected and repeat while retrying.
      const logger = pino(
        {
          level: opts.logLevel,
          serializers: {
            err: (e: unknown) => {
              const code = (e as { code?: unknown } | undefined)?.code;
              return e instanceof Error && typeof code === 'string' && code.startsWith('KVNET_')
                ? { type: e.name, message: e.message, code }
                : pino.stdSerializers.err(e as Error);
            },
          },
        },
        pino.destination({ dest: 1, sync: true }),
      );
      const agent = new Agent({ ...config, logger });
      let stopRequested: (sig: string) => void = () => undefined;
      const stopped = new Promise<string>((resolve) => (stopRequested = resolve));
      const onSignal = (sig: NodeJS.Signals): void => stopRequested(sig);
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
      try {
        await Promise.race([agent.start(), stopped.then(() => agent.stop())]);
        const sig = await stopped;
        logger.info({ signal: sig }, 'stopping');
        await agent.stop();
      } finally {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
      }
    });

  // ---- version / status / doctor ----
  program
    .command('version')
    .description('show the versions of this command and of the local agent')
    .addOption(new Option('-f, --format <format>', 'json, or a Go template over {Client, Agent} (e.g. \'{{.Agent.Version}}\')'))
    .action(async (opts, cmd) => {
      const clientInfo = { Version: BUILD_INFO.version, Commit: BUILD_INFO.commit, NodeJS: `v${BUILD_INFO.node}`, OS: process.platform, Arch: process.arch };
      const format = opts.format === undefined ? undefined : parseFormat(opts.format, '--format');
      let agentInfo: Record<string, unknown> | undefined;
      let failure: Error | undefined;
      try {
        const s = await client(cmd).call<Record<string, unknown>>('GET', '/v1/status');
        const store = (s.store ?? {}) as { url?: string; state?: string };
        agentInfo = { Version: s.version, Commit: s.commit ?? 'unknown', Node: s.node, Pid: s.pid, Store: store.url ?? s.storeUrl, StoreState: store.state ?? (s.ready ? 'reachable' : 'unknown'), Ready: s.ready };
      } catch (err) {
        failure = err as Error;
      }
      const data = { Client: clientInfo, Agent: agentInfo ?? null };
      if (format?.kind === 'json') json(data);
      else if (format?.kind === 'template') io.out(`${render(format.template!, data)}\n`);
      else {
        const lines = ['Client:', ` Version:     ${clientInfo.Version}`, ` Commit:      ${clientInfo.Commit}`, ` Node.js:     ${clientInfo.NodeJS}`, ` OS/Arch:     ${clientInfo.OS}/${clientInfo.Arch}`];
        if (agentInfo) {
          lines.push('', 'Agent:', ` Version:     ${String(agentInfo.Version)}`, ` Commit:      ${String(agentInfo.Commit)}`, ` Node name:   ${String(agentInfo.Node)}`, ` Pid:         ${String(agentInfo.Pid ?? '?')}`, ` Store:       ${String(agentInfo.Store)} (${String(agentInfo.StoreState)})`);
        }
        io.out(lines.join('\n') + '\n');
      }
      if (failure) throw failure;
    });

  program
    .command('status')
    .description('show the local agent\'s status: node, store state (reachable / unreachable since / resyncing), readiness')
    .option('--wait [duration]', `wait until the agent runs and its sockets answer (default ${DEFAULT_WAIT_MS / 1000}s); what a service manager runs before starting dockerd`)
    .action(async (opts, cmd) => {
      if (opts.wait === undefined) return json(await client(cmd).call('GET', '/v1/status'));
      const waitMs = opts.wait === true ? DEFAULT_WAIT_MS : usage(() => {
        const ms = parseDurationMs(String(opts.wait), 's');
        if (ms === undefined) throw new Error(`invalid --wait "${String(opts.wait)}": expected a duration like 60s`);
        return ms;
      });
      const c = client(cmd);
      const deadline = Date.now() + waitMs;
      let last = '';
      for (;;) {
        try {
          const s = await c.call<Record<string, unknown>>('GET', '/v1/status');
          const running = s.phase === undefined ? s.ready === true : s.phase === 'running';
          const plugin = typeof s.dockerPlugin === 'string' ? s.dockerPlugin : undefined;
          if (running && (!plugin || (await socketAnswers(plugin)))) return json(s);
          last = running ? `the Docker plugin socket ${plugin} does not answer yet` : `the agent is ${String(s.phase ?? 'not ready')}`;
        } catch (err) {
          last = (err as Error).message;
        }
        if (Date.now() >= deadline) throw new CliExit(`the kvnet agent was not running within ${Math.round(waitMs / 1000)}s: ${last}`);
        await new Promise((r) => setTimeout(r, WAIT_POLL_MS));
      }
    });

  program
    .command('doctor')
    .description('check this host: store, registration, kernel state vs the store\'s view, sandboxes, MTU, the VXLAN path to every node, Docker; exit 1 on problems')
    .option('--json', 'print the report as JSON', false)
    .action(async (opts, cmd) => {
      const report = await client(cmd).call<DoctorReport>('GET', '/v1/doctor');
      if (opts.json) json(report);
      else io.out(formatDoctor(report));
      if (!report.healthy) throw new CliExit(`${report.problems} problem${report.problems > 1 ? 's' : ''} found (see above)`);
    });

  // ---- node ----
  const node = program.command('node').description('cluster nodes');
  node
    .command('ls')
    .alias('list')
    .description('list every node the cluster knows, with its state (alive, unreachable, restarting, down)')
    .option('-q, --quiet', 'only names', false)
    .option('--filter <key=value>', 'name=…, state=… (repeatable)', collect, [] as string[])
    .option('--format <format>', formatHelp('a node (.Name, .State, .Advertise, .Endpoints, .Version, .Probe)'))
    .action(async (opts, cmd) => {
      const format = parseFormat(opts.format);
      const filters = usage(() => parseFilters(opts.filter, ['name', 'state']));
      const all = await client(cmd).call<NodeView[]>('GET', '/v1/nodes');
      const nodes = all.filter((n) => matchesFilters(filters, (k, v) => (k === 'name' ? n.name.includes(v) : n.state === v)));
      printList(io, format, { rows: nodes.map(nodeRow), headers: NODE_HEADERS }, {
        quiet: opts.quiet,
        id: (r) => r.Name,
        json: () => nodes,
        defaultTable: () =>
          // an agent of an older version leaves out what it does not know: '-' (table())
          table(['NAME', 'STATE', 'ADVERTISE', 'ENDPOINTS', 'VERSION'], nodes.map((n) => [`${n.name}${n.self ? ' *' : ''}`, n.state, n.advertise, n.endpoints === undefined ? undefined : String(n.endpoints), n.version])),
      });
    });
  node
    .command('rm')
    .alias('remove')
    .description('remove nodes that will not come back: their endpoints, names and addresses are freed now (refused for a live node unless --force)')
    .argument('<node...>', 'node names')
    .option('-f, --force', 'remove a node even though its record is live (its agent, if running, is out of the cluster until it restarts)', false)
    .action(async (names, opts, cmd) => {
      const c = client(cmd);
      const errors: string[] = [];
      for (const name of names) {
        try {
          await c.call('DELETE', `/v1/nodes/${encodeURIComponent(name)}${opts.force ? '?force=1' : ''}`);
          io.out(`${name}\n`);
        } catch (err) {
          errors.push((err as Error).message);
        }
      }
      if (errors.length) throw new CliExit(errors.join('\nkvnet: '));
    });

  // ---- network ----
  const network = program.command('network').description('manage networks and endpoints');
  network
    .command('create')
    .description('create a network (visible on every host)')
    .argument('<name>', 'network name, unique in the cluster')
    .option('--subnet <cidr>', 'subnet, one per family: IPv4 and/or IPv6 (default: next free /24 of 10.0.0.0/8; only IPv6 subnets: an IPv6-only network)', collect, [] as string[])
    .option('--gateway <ip>', 'gateway address of the subnet it lies in, repeatable (default: first usable address)', collect, [] as string[])
    .option('--ip-range <cidr>', 'allocate dynamic addresses from this range of the subnet it lies in, repeatable', collect, [] as string[])
    .option('--ipv6', "an IPv6 subnet too (the cluster's next free /64 unless an IPv6 --subnet is given)", false)
    .option('--no-ipv4', 'no IPv4 subnet: an IPv6-only network')
    .option('--mtu <bytes>', "MTU of the network on every host (default: this host's underlay MTU - 50, or the agent's --default-mtu)")
    .option('--aux-address <name=ip>', 'reserve an address, repeatable', collect, [] as string[])
    .option('--internal', 'no egress: containers get no way out', false)
    .option('--label <k=v>', 'label, repeatable', collect, [] as string[])
    .option('-o, --opt <k=v>', 'driver option, repeatable', collect, [] as string[])
    .action(async (name, opts, cmd) => {
      const body = {
        name,
        ...(opts.subnet.length ? { subnet: oneOrList(opts.subnet) } : {}),
        ...(opts.gateway.length ? { gateway: oneOrList(opts.gateway) } : {}),
        ...(opts.ipRange.length ? { ipRange: oneOrList(opts.ipRange) } : {}),
        ...(opts.ipv6 ? { ipv6: true } : {}),
        ...(opts.ipv4 === false ? { ipv4: false } : {}),
        ...(opts.mtu !== undefined ? { mtu: integerFlag('--mtu', opts.mtu, 1, 65535, 'an MTU in bytes') } : {}),
        ...(opts.auxAddress.length ? { auxAddresses: kvMap('--aux-address', opts.auxAddress) } : {}),
        ...(opts.internal ? { internal: true } : {}),
        ...(opts.label.length ? { labels: kvMap('--label', opts.label) } : {}),
        ...(opts.opt.length ? { options: kvMap('--opt', opts.opt) } : {}),
      };
      const created = await client(cmd).call<NetworkView>('POST', '/v1/networks', body);
      io.out(`${created.id}\n`);
    });
  network
    .command('ls')
    .alias('list')
    .description('list networks')
    .option('-q, --quiet', 'only network ids', false)
    .option('-f, --filter <key=value>', 'name=…, id=…, label=key or label=key=value, driver=kvnet (repeatable)', collect, [] as string[])
    .option('--no-trunc', 'show full network ids')
    .option('--format <format>', formatHelp('a network (.ID, .Name, .Driver, .Scope, .VNI, .Subnet, .Gateway, .Endpoints, .Internal, .Labels, .Label "k", .CreatedAt)'))
    .action(async (opts, cmd) => {
      const format = parseFormat(opts.format);
      const filters = usage(() => parseFilters(opts.filter, ['name', 'id', 'label', 'driver']));
      const noTrunc = opts.trunc === false;
      const all = await client(cmd).call<NetworkView[]>('GET', '/v1/networks');
      const nets = all.filter((n) =>
        matchesFilters(filters, (k, v) => (k === 'name' ? n.name.includes(v) : k === 'id' ? n.id.startsWith(v) : k === 'label' ? labelMatches(n.labels, v) : v === 'kvnet')),
      );
      printList(io, format, { rows: nets.map((n) => networkRow(n, noTrunc)), headers: NETWORK_HEADERS }, {
        quiet: opts.quiet,
        id: (r) => r.ID,
        json: () => nets,
        defaultTable: () => table(['NETWORK ID', 'NAME', 'VNI', 'SUBNET', 'ENDPOINTS'], nets.map((n) => [shortId(n.id, noTrunc), n.name, String(n.vni), n.subnet, String(n.endpoints.length)])),
      });
    });
  network
    .command('inspect')
    .description('show networks as JSON')
    .argument('<network...>', 'network names or ids')
    .addOption(new Option('-f, --format <template>', 'a Go template over each network (e.g. \'{{.Subnet}}\', \'{{range .Endpoints}}{{.Name}} {{end}}\', \'{{json .}}\')'))
    .action(async (refs, opts, cmd) => {
      const format = opts.format === undefined ? undefined : parseFormat(opts.format, '--format');
      const c = client(cmd);
      const found: NetworkView[] = [];
      const errors: string[] = [];
      for (const ref of refs) {
        try {
          found.push(await c.call<NetworkView>('GET', `/v1/networks/${encodeURIComponent(ref)}`));
        } catch (err) {
          errors.push((err as Error).message);
        }
      }
      if (format?.kind === 'template') io.out(found.map((n) => `${render(format.template!, n)}\n`).join(''));
      else if (found.length > 0 || errors.length === 0) json(found);
      if (errors.length) throw new CliExit(errors.join('\nkvnet: '));
    });
  network
    .command('rm')
    .alias('remove')
    .description('remove networks (refused while any host has an endpoint on them)')
    .argument('<network...>', 'network names or ids')
    .action(async (refs, _o, cmd) => {
      const c = client(cmd);
      const errors: string[] = [];
      for (const ref of refs) {
        try {
          await c.call('DELETE', `/v1/networks/${encodeURIComponent(ref)}`);
          io.out(`${ref}\n`);
        } catch (err) {
          errors.push((err as Error).message);
        }
      }
      if (errors.length) throw new CliExit(errors.join('\nkvnet: '));
    });
  network
    .command('prune')
    .description('remove every network that has no endpoint on any host')
    .option('-f, --force', 'do not ask for confirmation', false)
    .option('--filter <key=value>', 'label=key or label=key=value, name=… (repeatable)', collect, [] as string[])
    .action(async (opts, cmd) => {
      const filters = usage(() => parseFilters(opts.filter, ['label', 'name']));
      if (!opts.force) {
        const answer = (await io.prompt?.('WARNING! This will remove all kvnet networks without endpoints on any host.\nAre you sure you want to continue? [y/N] ')) ?? '';
        if (!/^y(es)?$/i.test(answer.trim())) return;
      }
      const c = client(cmd);
      const nets = (await c.call<NetworkView[]>('GET', '/v1/networks')).filter(
        (n) => n.endpoints.length === 0 && matchesFilters(filters, (k, v) => (k === 'label' ? labelMatches(n.labels, v) : n.name.includes(v))),
      );
      const removed: string[] = [];
      const errors: string[] = [];
      for (const n of nets) {
        try {
          await c.call('DELETE', `/v1/networks/${n.id}`);
          removed.push(n.name);
        } catch (err) {
          // an endpoint that appeared meanwhile keeps its network, as with Docker
          if (!(err instanceof ApiError && (err.code === 'KVNET_NETWORK_IN_USE' || err.code === 'KVNET_NOT_FOUND'))) errors.push((err as Error).message);
        }
      }
      if (removed.length > 0) io.out(`Deleted Networks:\n${removed.map((n) => `${n}\n`).join('')}`);
      if (errors.length) throw new CliExit(errors.join('\nkvnet: '));
    });
  network
    .command('connect')
    .description('attach a network namespace to a network on this host; prints the endpoint')
    .argument('<network>', 'network name or id')
    .requiredOption('--netns <path>', 'network namespace path, e.g. /run/netns/c1')
    .option('--name <name>', 'endpoint name, unique in the network (default: start of its id)')
    .option('--alias <name>', 'another name the endpoint resolves by on this network, repeatable', collect, [] as string[])
    .option('--ip <ip>', 'a specific IPv4 address in the subnet')
    .option('--ip6 <ip>', 'a specific IPv6 address in the IPv6 subnet')
    .option('--ifname <name>', 'interface name inside the namespace (default: eth0, or the next free ethN)')
    .action(async (net, opts, cmd) => {
      const body = { netns: opts.netns, ...(opts.ifname ? { ifname: opts.ifname } : {}), ...(opts.name ? { name: opts.name } : {}), ...(opts.alias.length ? { aliases: opts.alias } : {}), ...(opts.ip ? { ip: opts.ip } : {}), ...(opts.ip6 ? { ip6: opts.ip6 } : {}) };
      json(await client(cmd).call<EndpointView>('POST', `/v1/networks/${encodeURIComponent(net)}/endpoints`, body));
    });
  network
    .command('disconnect')
    .description('detach an endpoint (by name or id) from a network')
    .argument('<network>', 'network name or id')
    .argument('<endpoint>', 'endpoint name or id')
    .action(async (net, ep, _o, cmd) => {
      await client(cmd).call('DELETE', `/v1/networks/${encodeURIComponent(net)}/endpoints/${encodeURIComponent(ep)}`);
    });

  // ---- endpoint ----
  const endpoint = program.command('endpoint').description('endpoints of every network on every host');
  endpoint
    .command('ls')
    .alias('list')
    .description('list endpoints: network, name, node, address, MAC')
    .option('-q, --quiet', 'only endpoint ids', false)
    .option('-f, --filter <key=value>', 'network=name|id, node=…, name=…, id=… (repeatable)', collect, [] as string[])
    .option('--no-trunc', 'show full ids')
    .option('--format <format>', formatHelp('an endpoint (.ID, .Name, .Network, .NetworkID, .Node, .Address, .IP, .MAC, .Netns, .Ifname)'))
    .action(async (opts, cmd) => {
      const format = parseFormat(opts.format);
      const filters = usage(() => parseFilters(opts.filter, ['network', 'node', 'name', 'id']));
      const noTrunc = opts.trunc === false;
      const nets = await client(cmd).call<NetworkView[]>('GET', '/v1/networks');
      const eps: EndpointRow[] = nets
        .flatMap((n) => n.endpoints.map((e) => ({ ...e, networkName: n.name })))
        .filter((e) =>
          matchesFilters(filters, (k, v) =>
            k === 'network' ? e.networkName === v || e.network.startsWith(v) : k === 'node' ? e.node === v : k === 'name' ? e.name.includes(v) : e.id.startsWith(v),
          ),
        )
        .sort((a, b) => a.networkName.localeCompare(b.networkName) || a.name.localeCompare(b.name));
      printList(io, format, { rows: eps.map((e) => endpointRow(e, noTrunc)), headers: ENDPOINT_HEADERS }, {
        quiet: opts.quiet,
        id: (r) => r.ID,
        json: () => eps.map(({ networkName, ...e }) => ({ ...e, networkName })),
        defaultTable: () => table(['ENDPOINT ID', 'NAME', 'NETWORK', 'NODE', 'ADDRESS', 'MAC'], eps.map((e) => [shortId(e.id, noTrunc), e.name, e.networkName, e.node, e.address, e.mac])),
      });
    });

  // ---- dns (the resolver process; no agent needed) ----
  const dns = program.command('dns').description('the kvnet DNS resolver of this host (names across hosts)');
  const resolverSocket = (cmd: { optsWithGlobals(): { socket?: string; dnsSocket?: string } }): string => {
    const o = cmd.optsWithGlobals();
    return o.dnsSocket ?? resolverSocketFor(o.socket ?? DEFAULT_SOCKET);
  };
  dns
    .command('status')
    .description('show the resolver process: pid, listeners, query counters')
    .option('--dns-socket <path>', 'the resolver\'s feed socket (default: beside --socket)')
    .action(async (_o, cmd) => {
      const { resolverStatus } = await import('@kvnet/agent/resolver-control');
      const socket = resolverSocket(cmd);
      const status = await resolverStatus(socket);
      if (!status) throw new CliExit(`no kvnet resolver runs on ${socket}`);
      json(status);
    });
  dns
    .command('stop')
    .description('make the resolver exit and remove the addresses it added (uninstall; an agent that runs starts another)')
    .option('--dns-socket <path>', 'the resolver\'s feed socket (default: beside --socket)')
    .action(async (_o, cmd) => {
      const { stopResolver } = await import('@kvnet/agent/resolver-control');
      const socket = resolverSocket(cmd);
      const pid = await stopResolver(socket);
      io.out(pid === undefined ? `no kvnet resolver runs on ${socket}\n` : `kvnet resolver (pid ${pid}) stopped\n`);
    });

  return program;
}

/** Runs the CLI with `argv` (without node and script); resolves with the exit code. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      // commander has printed the message already (through outputError)
      return err.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    if (err instanceof CliExit) {
      io.err(`kvnet: ${err.message}\n`);
      return err.exitCode;
    }
    io.err(`kvnet: ${err instanceof Error ? err.message : String(err)}\n`);
    // The agent refused a value as invalid input (a bad --subnet, …): a usage error, as for flags.
    return err instanceof ApiError && err.code === 'KVNET_INVALID_INPUT' ? EXIT_USAGE : EXIT_FAILURE;
  }
}
