/**
 * The `kvnet` command line: `kvnet agent` runs the daemon in the foreground; every other command
 * talks to the local agent over its unix socket (`--socket`, env KVNET_SOCKET). Errors are printed
 * as `kvnet: <message>` on stderr; exit code 1 for failures, 2 for usage errors.
 */

import { Command, CommanderError, Option } from '@commander-js/extra-typings';
import { hostname } from 'node:os';
import type { EndpointView, NetworkView } from '@kvnet/agent';
// Only the config module: client commands must not load the agent (store backends, data plane).
import {
  DEFAULT_GATEWAY_BRIDGE,
  DEFAULT_METRICS_ADDR,
  DEFAULT_NAME_PREFIX,
  DEFAULT_SOCKET,
  DEFAULT_STATE_DIR,
  DEFAULT_STORE_URL,
  DEFAULT_TTL_S,
  MAX_DEFAULT_MTU,
  MIN_DEFAULT_MTU,
  parseIntegerFlag,
  parseTtl,
  resolveAdvertise,
  validateConfig,
} from '@kvnet/agent/config';
import { ApiClient } from './client.ts';
import { keyValue, table } from './format.ts';

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface CliIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
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

/** Builds the program; `io` receives all output (tests capture it). */
export function buildProgram(io: CliIo): Command<[], { socket: string }> {
  const program = new Command('kvnet')
    .description('One container network across many Linux hosts, backed by the KV store you already run')
    .addOption(new Option('--socket <path>', 'unix socket of the local agent').env('KVNET_SOCKET').default(DEFAULT_SOCKET))
    .configureOutput({
      writeOut: (s) => io.out(s),
      writeErr: (s) => io.err(s),
      outputError: (s, write) => write(`kvnet: ${s.replace(/^error: /, '')}`),
    })
    .exitOverride()
    .showSuggestionAfterError();

  const client = (cmd: { optsWithGlobals(): { socket?: string } }): ApiClient => new ApiClient(cmd.optsWithGlobals().socket ?? DEFAULT_SOCKET);
  const json = (v: unknown): void => io.out(JSON.stringify(v, null, 2) + '\n');

  // ---- agent ----
  program
    .command('agent')
    .description('run the per-host agent in the foreground (needs root)')
    .addOption(new Option('--cluster-store <url>', 'cluster store: consul://, etcd://, zk:// or local:///path').env('KVNET_CLUSTER_STORE').default(DEFAULT_STORE_URL))
    .addOption(new Option('--cluster-store-opt <k=v>', 'store option, repeatable (kv.cacertfile, kv.certfile, kv.keyfile, kv.insecure, kv.token, kv.username, kv.password, kv.timeout)').argParser(collect).default([] as string[]))
    .addOption(new Option('--cluster-advertise <iface|ip[:port]>', 'this host\'s underlay address (VTEP), as an interface or IPv4 address').env('KVNET_CLUSTER_ADVERTISE'))
    .addOption(new Option('--node-name <name>', 'node name, unique in the cluster (default: hostname)').env('KVNET_NODE_NAME'))
    .option('--state-dir <dir>', 'local state directory (node identity, egress addresses)', DEFAULT_STATE_DIR)
    .option('--metrics-addr <host:port|off>', 'loopback listener for /metrics, /healthz, /readyz', DEFAULT_METRICS_ADDR)
    .option('--ttl <duration>', 'TTL of the node record (2s…10m); a dead node is noticed after about this long', `${DEFAULT_TTL_S}s`)
    .option('--name-prefix <prefix>', 'prefix of every kernel object this agent creates, [a-z0-9]{1,6}', DEFAULT_NAME_PREFIX)
    .option('--gateway-bridge <name|none>', 'bridge giving containers of non-internal networks a way out, or none', DEFAULT_GATEWAY_BRIDGE)
    .option('--docker-plugin <socket|off>', 'serve the Docker network + IPAM plugin "kvnet" on this socket (e.g. /run/docker/plugins/kvnet.sock)', 'off')
    .option('--docker-socket <socket|off>', 'the local dockerd\'s API socket (network names; kvnet networks mirrored into Docker)', '/var/run/docker.sock')
    .addOption(new Option('--docker-scope <scope>', 'scope the Docker plugin reports').choices(['local', 'global']).default('local'))
    .addOption(new Option('--docker-driver-name <name>', 'the name dockerd knows the plugin by: kvnet, or a managed plugin\'s reference such as kvnet:latest').env('KVNET_DOCKER_DRIVER_NAME').default('kvnet'))
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .option('--vxlan-port <port>', "the cluster's VXLAN UDP port: recorded by the first agent (default 4789); an agent given another port refuses to start")
    .option('--default-mtu <bytes>', "MTU of networks this agent creates without --mtu (default: the underlay interface's MTU - 50, or - 70 over IPv6)")
    .action(async (opts, cmd) => {
      if (!opts.clusterAdvertise) throw new CliExit('--cluster-advertise is required (or set KVNET_CLUSTER_ADVERTISE)', EXIT_USAGE);
      let ttlS: number;
      try {
        ttlS = parseTtl(opts.ttl);
      } catch (err) {
        throw new CliExit((err as Error).message, EXIT_USAGE);
      }
      const config = {
        storeUrl: opts.clusterStore,
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
        ...(opts.vxlanPort !== undefined ? { vxlanPort: integerFlag('--vxlan-port', opts.vxlanPort, 1, 65535, 'a UDP port number') } : {}),
        ...(opts.defaultMtu !== undefined ? { defaultMtu: integerFlag('--default-mtu', opts.defaultMtu, MIN_DEFAULT_MTU, MAX_DEFAULT_MTU, 'an MTU in bytes') } : {}),
      };
      const { parseStoreUrl, parseStoreOpts } = await import('@kvnet/store');
      try {
        validateConfig(config);
        resolveAdvertise(config.advertise);
        parseStoreUrl(config.storeUrl);
        parseStoreOpts(config.storeUrl, config.storeOpts);
      } catch (err) {
        throw new CliExit((err as Error).message, EXIT_USAGE);
      }
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

  // ---- status / node ----
  program
    .command('status')
    .description('show the local agent\'s status')
    .action(async (_o, cmd) => json(await client(cmd).call('GET', '/v1/status')));

  const node = program.command('node').description('cluster nodes');
  node
    .command('ls')
    .description('list live nodes')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (opts, cmd) => {
      const nodes = await client(cmd).call<Array<{ name: string; advertise: string; version: string; startedAt: string }>>('GET', '/v1/nodes');
      if (opts.format === 'json') return json(nodes);
      io.out(table(['NAME', 'ADVERTISE', 'VERSION', 'STARTED'], nodes.map((n) => [n.name, n.advertise, n.version, n.startedAt])));
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
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (opts, cmd) => {
      const nets = await client(cmd).call<NetworkView[]>('GET', '/v1/networks');
      if (opts.format === 'json') return json(nets);
      io.out(table(['NETWORK ID', 'NAME', 'VNI', 'SUBNET', 'ENDPOINTS'], nets.map((n) => [n.id.slice(0, 12), n.name, String(n.vni), n.subnet, String(n.endpoints.length)])));
    });
  network
    .command('inspect')
    .description('show networks as JSON')
    .argument('<network...>', 'network names or ids')
    .action(async (refs, _o, cmd) => {
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
      json(found);
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
    .command('connect')
    .description('attach a network namespace to a network on this host; prints the endpoint')
    .argument('<network>', 'network name or id')
    .requiredOption('--netns <path>', 'network namespace path, e.g. /run/netns/c1')
    .option('--name <name>', 'endpoint name, unique in the network (default: start of its id)')
    .option('--ip <ip>', 'a specific IPv4 address in the subnet')
    .option('--ip6 <ip>', 'a specific IPv6 address in the IPv6 subnet')
    .option('--ifname <name>', 'interface name inside the namespace (default: eth0, or the next free ethN)')
    .action(async (net, opts, cmd) => {
      const body = { netns: opts.netns, ...(opts.ifname ? { ifname: opts.ifname } : {}), ...(opts.name ? { name: opts.name } : {}), ...(opts.ip ? { ip: opts.ip } : {}), ...(opts.ip6 ? { ip6: opts.ip6 } : {}) };
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
    return EXIT_FAILURE;
  }
}
