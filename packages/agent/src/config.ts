/** The agent's configuration (what `kvnet agent` flags become), its defaults and its validation. */

import { isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { parseDurationMs } from '@kvnet/store/duration';
// Not ./ipv4.ts: that loads the data plane, and every client command loads this file.
import { InvalidConfigError } from './errors.ts';
// Pure modules of the names face (constants; upstream parsing): no data plane either.
import { DEFAULT_RESOLVER_ADDRESS } from './names/names.ts';
import { parseUpstream } from './names/upstream.ts';

export const DEFAULT_STORE_URL = 'local:///var/lib/kvnet/store.db';
export const DEFAULT_STATE_DIR = '/var/lib/kvnet';
export const DEFAULT_SOCKET = '/run/kvnet/kvnet.sock';
export const DEFAULT_METRICS_ADDR = '127.0.0.1:9473';
export const DEFAULT_TTL_S = 10;
export const MIN_TTL_S = 2;
export const MAX_TTL_S = 600;
export const DEFAULT_NAME_PREFIX = 'kvnet';
export const DEFAULT_GATEWAY_BRIDGE = 'kvnet_gwbridge';
/** Where dockerd looks for the `kvnet` v1 plugin. */
export const DEFAULT_DOCKER_PLUGIN_SOCKET = '/run/docker/plugins/kvnet.sock';
export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';
export const NAME_PREFIX_PATTERN = /^[a-z0-9]{1,6}$/;
/** Bounds of `--default-mtu` (the IPv4 minimum; the underlay check comes at start). */
export const MIN_DEFAULT_MTU = 68;
export const MAX_DEFAULT_MTU = 65535;
export const NODE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
/** `--dns-address`: the cluster's resolver address (link-local, see names/README.md); `off` turns names off. */
export const DEFAULT_DNS_ADDRESS = DEFAULT_RESOLVER_ADDRESS;
/** A systemd unit name as `--dns-resolver-unit` takes it (systemd-run adds `.service` when missing). */
export const SYSTEMD_UNIT_PATTERN = /^[A-Za-z0-9:_.@-]{1,200}$/;

export interface AgentConfig {
  readonly storeUrl: string;
  /** `--cluster-store-opt` values, `k=v`. */
  readonly storeOpts: readonly string[];
  /** Interface name or IPv4 address, optionally `:PORT` (the port is recorded, not used). */
  readonly advertise: string;
  readonly nodeName: string;
  readonly stateDir: string;
  readonly socketPath: string;
  /** `HOST:PORT` or `off`. */
  readonly metricsAddr: string;
  readonly ttlS: number;
  readonly namePrefix: string;
  /** Bridge name, or `none` for no egress. */
  readonly gatewayBridge: string;
  /**
   * `--vxlan-port`: the cluster's VXLAN UDP port. The first agent of a cluster records it (default 4789);
   * an agent given another port than the recorded one refuses to start. Undefined: the recorded port.
   */
  readonly vxlanPort?: number;
  /**
   * `--default-mtu`: MTU of networks this agent creates without `--mtu` (default: this host's underlay
   * MTU − 50, or − 70 over an IPv6 underlay). Checked against the underlay at start.
   */
  readonly defaultMtu?: number;
  /** Unix socket of the Docker network + IPAM plugin, or `off` (default: off). */
  readonly dockerPlugin?: string;
  /** The local dockerd's Engine API socket (network names; mirroring kvnet networks into Docker), or `off`. */
  readonly dockerSocket?: string;
  /** Scope the plugin reports to Docker: `local` (default, any Docker version) or `global` (dockerd with --cluster-store). */
  readonly dockerScope?: 'local' | 'global';
  /** The name dockerd knows the plugin by: `kvnet` for a socket plugin (default), the plugin reference (`kvnet:latest`) for a managed one. */
  readonly dockerDriverName?: string;
  /** How long a Docker endpoint dockerd does not list may live before it counts as stale (default 60 s). */
  readonly dockerStaleAfterMs?: number;
  /** `--dns-address`: the resolver address containers ask (default {@link DEFAULT_DNS_ADDRESS}), or `off` for no names face. */
  readonly dnsAddress?: string;
  /** `--dns-upstream`: servers `ip`, `ip:port` or `[ipv6]:port` for names outside kvnet (default: the host's /etc/resolv.conf). */
  readonly dnsUpstreams?: readonly string[];
  /** `--dns-socket`: the resolver process's feed socket (default {@link resolverSocketFor} of `--socket`). */
  readonly dnsSocket?: string;
  /**
   * `--dns-resolver-unit`: start the resolver process with `systemd-run --unit=<name>`, in a cgroup of
   * its own, so `systemctl restart kvnet` (KillMode=mixed) does not take it down. Default: a detached
   * child of the agent.
   */
  readonly dnsResolverUnit?: string;
}

/**
 * The resolver's feed socket beside the agent's API socket: `/run/kvnet/kvnet.sock` →
 * `/run/kvnet/kvnet-resolver.sock`. One per agent, so agents of simulated hosts on one machine never
 * share a resolver.
 */
export function resolverSocketFor(socketPath: string): string {
  return join(dirname(socketPath), `${basename(socketPath).replace(/\.sock$/, '')}-resolver.sock`);
}

/** Parses an integer flag value (`--vxlan-port 4790`, `--default-mtu 1400`) in `min`…`max`; the message names flag and value. */
export function parseIntegerFlag(flag: string, text: string, min: number, max: number, what: string): number {
  const n = /^\d{1,6}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!(n >= min && n <= max)) throw new InvalidConfigError(`invalid ${flag} "${text}": must be ${what} (${min}…${max})`);
  return n;
}

/** Parses `10s`, `1m`, `1m30s`, `1500ms` or a bare number of seconds into whole seconds. */
export function parseTtl(text: string): number {
  const ms = parseDurationMs(text, 's');
  if (ms === undefined) throw new InvalidConfigError(`invalid --ttl "${text}": expected a duration like 10s or 1m`);
  const seconds = ms / 1000;
  if (!(seconds >= MIN_TTL_S && seconds <= MAX_TTL_S)) {
    throw new InvalidConfigError(`invalid --ttl "${text}": must be between ${MIN_TTL_S}s and ${MAX_TTL_S / 60}m`);
  }
  return Math.round(seconds);
}

/**
 * The store the agent uses: `--cluster-store` as given, or with `--single-host` the embedded store at
 * {@link DEFAULT_STORE_URL}. Neither is refused: a host that silently fell back to an embedded store
 * (a typo in its environment) would be an island nobody else sees.
 */
export function resolveStoreUrl(given: string | undefined, singleHost: boolean): string {
  const url = given?.trim() || undefined;
  if (url === undefined) {
    if (singleHost) return DEFAULT_STORE_URL;
    throw new InvalidConfigError(
      'no --cluster-store (or KVNET_CLUSTER_STORE): give every host the same store, e.g. --cluster-store etcd://10.0.0.5:2379/kvnet; ' +
        `for one machine only, pass --cluster-store ${DEFAULT_STORE_URL} or --single-host`,
    );
  }
  if (singleHost && !url.startsWith('local://')) {
    throw new InvalidConfigError(`--single-host runs on the embedded store; it cannot be combined with --cluster-store ${url.replace(/\/\/[^@/]*@/, '//')}`);
  }
  return url;
}

export interface Advertise {
  /** IPv4 (or IPv6, given as one) address: this host's VTEP. */
  readonly ip: string;
  /** As given, normalised to `ip[:port]`. */
  readonly address: string;
}

/**
 * `IFACE|IP[:PORT]` → the IPv4 address. An interface name is looked up in the agent's own network
 * namespace (its first IPv4 address).
 */
export function resolveAdvertise(text: string, interfaces = networkInterfaces()): Advertise {
  const v6 = resolveIpv6Advertise(text);
  if (v6) return v6;
  const m = /^([^:\s]+)(?::(\d{1,5}))?$/.exec(text.trim());
  if (!m) throw new InvalidConfigError(`invalid --cluster-advertise "${text}": expected IFACE or IP, optionally with :PORT`);
  const [, host, port] = m;
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) {
    throw new InvalidConfigError(`invalid --cluster-advertise "${text}": port ${port} is not 1…65535`);
  }
  let ip: string;
  if (isIPv4(host!)) ip = host!;
  else if (/^\d+(\.\d+)*$/.test(host!)) throw new InvalidConfigError(`invalid --cluster-advertise "${text}": ${host} is not an IPv4 address`);
  else {
    const addrs = interfaces[host!];
    if (!addrs) {
      throw new InvalidConfigError(`invalid --cluster-advertise "${text}": no interface ${host} that is up with an address in this network namespace (have: ${Object.keys(interfaces).join(', ') || 'none'})`);
    }
    const v4 = addrs.find((a) => a.family === 'IPv4' && !a.internal) ?? addrs.find((a) => a.family === 'IPv4');
    if (!v4) throw new InvalidConfigError(`invalid --cluster-advertise "${text}": interface ${host} has no IPv4 address`);
    ip = v4.address;
  }
  if (ip === '0.0.0.0' || ip.startsWith('127.')) {
    throw new InvalidConfigError(`invalid --cluster-advertise "${text}": ${ip} cannot be reached by other hosts`);
  }
  return { ip, address: port !== undefined ? `${ip}:${port}` : ip };
}

/**
 * An IPv6 underlay: `--cluster-advertise 2001:db8::5` or `[2001:db8::5]:7946` (an IPv6 VTEP; the data
 * plane then sends VXLAN over IPv6, 70 bytes of overhead). Undefined when `text` is not an IPv6 form;
 * link-local and loopback addresses are refused (other hosts cannot reach them without a zone).
 */
function resolveIpv6Advertise(text: string): Advertise | undefined {
  const m = /^\[([^\]\s]+)\](?::(\d{1,5}))?$/.exec(text.trim()) ?? (isIPv6(text.trim()) ? [text, text.trim(), undefined] : null);
  if (!m) return undefined;
  const [, host, port] = m;
  if (!isIPv6(host!)) throw new InvalidConfigError(`invalid --cluster-advertise "${text}": ${host} is not an IPv6 address`);
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) throw new InvalidConfigError(`invalid --cluster-advertise "${text}": port ${port} is not 1…65535`);
  // the URL serializer writes IPv6 the RFC 5952 way (lowercase, longest zero run compressed), as iproute2 prints it
  const ip = new URL(`http://[${host}]/`).hostname.slice(1, -1);
  if (ip === '::1' || ip === '::' || /^fe[89ab]/.test(ip)) throw new InvalidConfigError(`invalid --cluster-advertise "${text}": ${ip} cannot be reached by other hosts`);
  return { ip, address: port !== undefined ? `[${ip}]:${port}` : ip };
}

/** Checks the flags that need no I/O; throws InvalidConfigError naming the flag and value. */
export function validateConfig(config: AgentConfig): void {
  if (!NAME_PREFIX_PATTERN.test(config.namePrefix)) {
    throw new InvalidConfigError(`invalid --name-prefix "${config.namePrefix}": must be 1 to 6 lowercase letters or digits`);
  }
  if (!NODE_NAME_PATTERN.test(config.nodeName)) {
    throw new InvalidConfigError(`invalid --node-name "${config.nodeName}": must be letters, digits, "_", "." or "-" (at most 63), starting with a letter or digit`);
  }
  if (config.gatewayBridge !== 'none' && !/^[A-Za-z0-9_.-]{1,15}$/.test(config.gatewayBridge)) {
    throw new InvalidConfigError(`invalid --gateway-bridge "${config.gatewayBridge}": must be an interface name of at most 15 characters, or none`);
  }
  if (!(config.ttlS >= MIN_TTL_S && config.ttlS <= MAX_TTL_S)) {
    throw new InvalidConfigError(`invalid --ttl ${config.ttlS}s: must be between ${MIN_TTL_S}s and ${MAX_TTL_S / 60}m`);
  }
  if (!config.socketPath.startsWith('/')) throw new InvalidConfigError(`invalid --socket "${config.socketPath}": must be an absolute path`);
  if (config.dockerPlugin !== undefined && config.dockerPlugin !== 'off' && !config.dockerPlugin.startsWith('/')) {
    throw new InvalidConfigError(`invalid --docker-plugin "${config.dockerPlugin}": must be an absolute socket path (e.g. ${DEFAULT_DOCKER_PLUGIN_SOCKET}) or off`);
  }
  if (config.dockerSocket !== undefined && config.dockerSocket !== 'off' && !config.dockerSocket.startsWith('/')) {
    throw new InvalidConfigError(`invalid --docker-socket "${config.dockerSocket}": must be an absolute socket path or off`);
  }
  if (config.vxlanPort !== undefined && !(Number.isInteger(config.vxlanPort) && config.vxlanPort >= 1 && config.vxlanPort <= 65535)) {
    throw new InvalidConfigError(`invalid --vxlan-port ${String(config.vxlanPort)}: must be a UDP port number (1…65535)`);
  }
  if (config.defaultMtu !== undefined && !(Number.isInteger(config.defaultMtu) && config.defaultMtu >= MIN_DEFAULT_MTU && config.defaultMtu <= MAX_DEFAULT_MTU)) {
    throw new InvalidConfigError(`invalid --default-mtu ${String(config.defaultMtu)}: must be an integer MTU (${MIN_DEFAULT_MTU}…${MAX_DEFAULT_MTU})`);
  }
  if (config.dockerScope !== undefined && config.dockerScope !== 'local' && config.dockerScope !== 'global') {
    throw new InvalidConfigError(`invalid --docker-scope "${String(config.dockerScope)}": must be local or global`);
  }
  if (config.dnsAddress !== undefined && config.dnsAddress !== 'off' && !(isIPv4(config.dnsAddress) && config.dnsAddress !== '0.0.0.0' && Number(config.dnsAddress.split('.')[0]) < 224)) {
    throw new InvalidConfigError(`invalid --dns-address "${config.dnsAddress}": must be a unicast IPv4 address (default ${DEFAULT_DNS_ADDRESS}) or off`);
  }
  for (const u of config.dnsUpstreams ?? []) {
    try {
      parseUpstream(u);
    } catch (err) {
      throw new InvalidConfigError(`invalid --dns-upstream "${u}": ${(err as Error).message}`);
    }
  }
  if (config.dnsSocket !== undefined && !config.dnsSocket.startsWith('/')) throw new InvalidConfigError(`invalid --dns-socket "${config.dnsSocket}": must be an absolute path`);
  if (config.dnsResolverUnit !== undefined && !SYSTEMD_UNIT_PATTERN.test(config.dnsResolverUnit)) {
    throw new InvalidConfigError(`invalid --dns-resolver-unit "${config.dnsResolverUnit}": expected a systemd unit name such as kvnet-resolver`);
  }
  if (config.dockerDriverName !== undefined && !/^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$/.test(config.dockerDriverName)) {
    throw new InvalidConfigError(`invalid --docker-driver-name "${config.dockerDriverName}": expected a Docker plugin name like kvnet or kvnet:latest`);
  }
}
