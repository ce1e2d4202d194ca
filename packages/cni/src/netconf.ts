/**
 * Pure: what a CNI call asks for, from its environment (`CNI_*`) and its stdin (the plugin's network
 * configuration). Every refusal is a {@link CniError} with the spec's code and a message naming the
 * variable or field and its value.
 *
 * The configuration (README.md has examples):
 *
 * | field | meaning |
 * |---|---|
 * | `type` | `kvnet` (the executable's name in the runtime's CNI plugin directory) |
 * | `network` | the kvnet network, by name or id (default: the configuration's `name`) |
 * | `socket` | the agent's local API socket (default {@link DEFAULT_SOCKET}) |
 * | `dns` | put in the result as given; without it the result names kvnet's resolver (the agent's `--dns-address`, 169.254.53.53 by default) unless names are off or the network is IPv6-only |
 *
 * Per container: a requested address from `runtimeConfig.ips` (capability `ips`), `args.cni.ips` or
 * `CNI_ARGS` `IP=` (in that order: the conventions say `args` wins over `CNI_ARGS`); the endpoint's
 * name from `runtimeConfig.name` (a capability a runtime may pass), `args.cni.name` or `CNI_ARGS`
 * `K8S_POD_NAME` (podman passes the container name there).
 */

import { CniError } from './errors.ts';
import { COMMANDS, ErrorCode, isSupportedVersion, LATEST_VERSION, SUPPORTED_VERSIONS, type CniCommand, type CniDns, type CniResult, type CniVersion } from './spec.ts';

/** Where the agent's local API listens unless the configuration says otherwise (`kvnet agent --socket`). */
export const DEFAULT_SOCKET = '/run/kvnet/kvnet.sock';
/** CNI_ARGS keys the plugin understands (the others need `IgnoreUnknown=1`). */
export const KNOWN_CNI_ARGS = ['IgnoreUnknown', 'IP', 'MAC', 'K8S_POD_NAME', 'K8S_POD_NAMESPACE', 'K8S_POD_INFRA_CONTAINER_ID', 'K8S_POD_UID'] as const;
/** kvnet's rule for endpoint names (the agent's, Docker's). */
const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const NAME_MAX_CHARS = 64;
/** CNI's rule for container ids and network configuration names. */
const CNI_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** Linux interface names: at most 15 bytes, no `/`, `:` or whitespace, not `.` or `..`. */
const IFNAME_PATTERN = /^[^\s/:]{1,15}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** The `CNI_*` environment of one call. */
export interface CniEnv {
  readonly command: CniCommand;
  readonly containerId?: string;
  readonly netns?: string;
  readonly ifname?: string;
  /** `CNI_ARGS` as key → value. */
  readonly args: ReadonlyMap<string, string>;
}

/** The plugin's network configuration, as read from stdin. */
export interface NetConf {
  readonly cniVersion: CniVersion;
  /** The CNI network configuration's name. */
  readonly name: string;
  /** The kvnet network (name or id). */
  readonly network: string;
  readonly socket: string;
  readonly dns?: CniDns;
  readonly runtimeConfig: Readonly<Record<string, unknown>>;
  readonly args: Readonly<Record<string, unknown>>;
  readonly prevResult?: CniResult;
  /** GC: `cni.dev/valid-attachments` (empty when the runtime sent none). */
  readonly validAttachments?: ReadonlyArray<{ readonly containerId: string; readonly ifname: string }>;
}

/** A requested address: `ip`, the prefix length if one was given, and where it came from (for messages). */
export interface RequestedAddress {
  readonly ip: string;
  readonly prefixLength?: number;
  readonly from: string;
}

const show = (v: unknown): string => JSON.stringify(v) ?? String(v);

/** Parses `CNI_COMMAND` only (VERSION needs nothing else). */
export function parseCommand(env: NodeJS.ProcessEnv): CniCommand {
  const command = env.CNI_COMMAND;
  if (!command) throw new CniError(ErrorCode.INVALID_ENVIRONMENT, 'CNI_COMMAND is not set', `kvnet is a CNI plugin: a container runtime runs it with CNI_COMMAND=${COMMANDS.join('|')}`);
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw new CniError(ErrorCode.INVALID_ENVIRONMENT, `CNI_COMMAND=${command} is not a CNI verb (expected one of ${COMMANDS.join(', ')})`);
  }
  return command as CniCommand;
}

/** `CNI_ARGS` (`K=V;K=V`) → map; refuses a part without `=`. */
export function parseCniArgs(text: string | undefined): Map<string, string> {
  const args = new Map<string, string>();
  for (const part of (text ?? '').split(';')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw new CniError(ErrorCode.INVALID_ENVIRONMENT, `CNI_ARGS part ${show(part)} is not KEY=VALUE (CNI_ARGS=${show(text)})`);
    args.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return args;
}

/**
 * The environment of `command`: the variables the spec requires for it must be set (ADD and CHECK:
 * container id, netns, ifname; DEL: container id and ifname) and well-formed.
 */
export function parseEnv(env: NodeJS.ProcessEnv, command: CniCommand): CniEnv {
  const needs: Record<CniCommand, readonly string[]> = {
    ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
    CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
    DEL: ['CNI_CONTAINERID', 'CNI_IFNAME'],
    STATUS: [],
    GC: [],
    VERSION: [],
  };
  const missing = needs[command].filter((v) => !env[v]);
  if (missing.length > 0) throw new CniError(ErrorCode.INVALID_ENVIRONMENT, `CNI ${command} needs ${missing.join(', ')}, which ${missing.length > 1 ? 'are' : 'is'} not set`);
  const bad: string[] = [];
  if (env.CNI_CONTAINERID && (needs[command].includes('CNI_CONTAINERID')) && !CNI_ID_PATTERN.test(env.CNI_CONTAINERID)) {
    bad.push(`CNI_CONTAINERID=${show(env.CNI_CONTAINERID)} (must start with a letter or digit; letters, digits, "_", "." and "-" only)`);
  }
  if (env.CNI_IFNAME && needs[command].includes('CNI_IFNAME') && (!IFNAME_PATTERN.test(env.CNI_IFNAME) || env.CNI_IFNAME === '.' || env.CNI_IFNAME === '..' || Buffer.byteLength(env.CNI_IFNAME) > 15)) {
    bad.push(`CNI_IFNAME=${show(env.CNI_IFNAME)} (an interface name of at most 15 bytes without "/", ":" or spaces)`);
  }
  if (env.CNI_NETNS && needs[command].includes('CNI_NETNS') && !env.CNI_NETNS.startsWith('/')) {
    bad.push(`CNI_NETNS=${show(env.CNI_NETNS)} (must be an absolute path, e.g. /run/netns/NAME)`);
  }
  if (bad.length > 0) throw new CniError(ErrorCode.INVALID_ENVIRONMENT, `invalid ${bad.join('; ')}`);
  return {
    command,
    ...(env.CNI_CONTAINERID ? { containerId: env.CNI_CONTAINERID } : {}),
    ...(env.CNI_NETNS ? { netns: env.CNI_NETNS } : {}),
    ...(env.CNI_IFNAME ? { ifname: env.CNI_IFNAME } : {}),
    args: parseCniArgs(env.CNI_ARGS),
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The version a VERSION call was asked in (its stdin may be empty or not JSON: then the latest). */
export function versionOf(stdin: string): CniVersion {
  try {
    const v = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    return isSupportedVersion(v) ? v : LATEST_VERSION;
  } catch {
    return LATEST_VERSION;
  }
}

/** Parses and checks the network configuration on stdin for `command`. */
export function parseNetConf(stdin: string, command: CniCommand): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(ErrorCode.DECODING_FAILURE, `the network configuration on stdin is not JSON: ${(err as Error).message}`, `stdin began with ${show(stdin.slice(0, 80))}`);
  }
  if (!isObject(raw)) throw new CniError(ErrorCode.DECODING_FAILURE, `the network configuration on stdin must be a JSON object, not ${show(raw).slice(0, 80)}`);
  const version = raw.cniVersion;
  if (!isSupportedVersion(version)) {
    throw new CniError(ErrorCode.INCOMPATIBLE_VERSION, `cniVersion ${show(version)} is not supported by the kvnet plugin (supported: ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  const name = raw.name;
  if (typeof name !== 'string' || !CNI_ID_PATTERN.test(name)) {
    throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `invalid network configuration: name ${show(name)} must be a string starting with a letter or digit (letters, digits, "_", "." and "-")`);
  }
  if (raw.ipam !== undefined) {
    throw new CniError(ErrorCode.UNSUPPORTED_FIELD, `unsupported field ipam ${show(raw.ipam)} in network configuration ${name}: kvnet allocates addresses itself, by compare-and-swap in its store; remove "ipam"`);
  }
  const network = raw.network ?? name;
  if (typeof network !== 'string' || network === '' || network.length > NAME_MAX_CHARS) {
    throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `invalid network configuration ${name}: network ${show(network)} must name a kvnet network (its name or id)`);
  }
  const socket = raw.socket ?? DEFAULT_SOCKET;
  if (typeof socket !== 'string' || !socket.startsWith('/')) {
    throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `invalid network configuration ${name}: socket ${show(socket)} must be the absolute path of the kvnet agent's socket (default ${DEFAULT_SOCKET})`);
  }
  for (const field of ['runtimeConfig', 'args', 'dns'] as const) {
    if (raw[field] !== undefined && !isObject(raw[field])) throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `invalid network configuration ${name}: ${field} ${show(raw[field])} must be an object`);
  }
  let prevResult: CniResult | undefined;
  if (raw.prevResult !== undefined && raw.prevResult !== null) {
    if (!isObject(raw.prevResult)) throw new CniError(ErrorCode.DECODING_FAILURE, `prevResult ${show(raw.prevResult).slice(0, 80)} in network configuration ${name} is not a CNI result`);
    prevResult = raw.prevResult as unknown as CniResult;
  }
  let validAttachments: NetConf['validAttachments'];
  if (command === 'GC') {
    // libcni sends the list under both names (its earlier spec text said cni.dev/attachments) — and none
    // at all when its caller passes no list (cnitool gc), after it has DELeted every attachment it cached
    // for the network: then every attachment of the configuration counts as stale, as libcni meant.
    const list = raw['cni.dev/valid-attachments'] ?? raw['cni.dev/attachments'] ?? [];
    if (!Array.isArray(list) || !list.every((a) => isObject(a) && typeof a.containerID === 'string' && typeof a.ifname === 'string')) {
      throw new CniError(
        ErrorCode.INVALID_NETWORK_CONFIG,
        `invalid cni.dev/valid-attachments ${show(list).slice(0, 80)} in CNI GC of network configuration ${name}: expected a list of {containerID, ifname}`,
        'nothing was removed',
      );
    }
    validAttachments = (list as Array<{ containerID: string; ifname: string }>).map((a) => ({ containerId: a.containerID, ifname: a.ifname }));
  }
  return {
    cniVersion: version,
    name,
    network,
    socket,
    ...(isObject(raw.dns) ? { dns: raw.dns as CniDns } : {}),
    runtimeConfig: isObject(raw.runtimeConfig) ? raw.runtimeConfig : {},
    args: isObject(raw.args) ? raw.args : {},
    ...(prevResult ? { prevResult } : {}),
    ...(validAttachments ? { validAttachments } : {}),
  };
}

function cniArgsArea(conf: NetConf): Record<string, unknown> {
  return isObject(conf.args.cni) ? conf.args.cni : {};
}

/**
 * Refuses what kvnet cannot honour: CNI_ARGS keys it does not know (unless `IgnoreUnknown`) and a
 * requested MAC (kvnet derives the MAC from the address, `02:42:` + its bytes, as Docker does).
 */
export function checkUnsupported(conf: NetConf, env: CniEnv): void {
  const ignore = /^(1|true)$/i.test(env.args.get('IgnoreUnknown') ?? '');
  const unknown = [...env.args.keys()].filter((k) => !(KNOWN_CNI_ARGS as readonly string[]).includes(k));
  if (unknown.length > 0 && !ignore) {
    throw new CniError(
      ErrorCode.UNSUPPORTED_FIELD,
      `unsupported CNI_ARGS ${unknown.map((k) => `${k}=${env.args.get(k)}`).join(', ')} for network ${conf.network}`,
      `the kvnet plugin knows ${KNOWN_CNI_ARGS.join(', ')}; add IgnoreUnknown=1 to CNI_ARGS to pass others`,
    );
  }
  const mac = conf.runtimeConfig.mac ?? cniArgsArea(conf).mac ?? env.args.get('MAC');
  if (mac !== undefined) {
    throw new CniError(ErrorCode.UNSUPPORTED_FIELD, `unsupported field mac ${show(mac)} for network ${conf.network}: kvnet derives each endpoint's MAC from its address (02:42: and the four address bytes)`);
  }
}

/** The address asked for, if any (first of runtimeConfig.ips, args.cni.ips, CNI_ARGS IP). */
export function requestedAddress(conf: NetConf, env: CniEnv): RequestedAddress | undefined {
  const sources: Array<[string, unknown]> = [
    ['runtimeConfig.ips', conf.runtimeConfig.ips],
    ['args.cni.ips', cniArgsArea(conf).ips],
    ['CNI_ARGS IP', env.args.has('IP') ? env.args.get('IP')!.split(',').filter(Boolean) : undefined],
  ];
  const found = sources.find(([, v]) => v !== undefined && !(Array.isArray(v) && v.length === 0));
  if (!found) return undefined;
  const [from, value] = found;
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `invalid ${from} ${show(value)} for network ${conf.network}: expected a list of addresses`);
  }
  if (value.length > 1) {
    throw new CniError(ErrorCode.UNSUPPORTED_FIELD, `unsupported ${from} ${show(value)} for network ${conf.network}: a kvnet attachment has one IPv4 address`);
  }
  const text = value[0]!;
  const [ip, prefix, extra] = text.split('/');
  const prefixLength = prefix === undefined ? undefined : Number(prefix);
  if (!ip || !IPV4.test(ip) || extra !== undefined || (prefix !== undefined && !(/^\d{1,2}$/.test(prefix) && prefixLength! <= 32))) {
    throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `invalid address ${show(text)} in ${from} for network ${conf.network}: expected an IPv4 address, optionally with its prefix length (10.0.1.5 or 10.0.1.5/24)`);
  }
  return { ip, ...(prefixLength !== undefined ? { prefixLength } : {}), from };
}

/** The endpoint name asked for, if any (first of runtimeConfig.name, args.cni.name, CNI_ARGS K8S_POD_NAME). */
export function requestedName(conf: NetConf, env: CniEnv): string | undefined {
  const sources: Array<[string, unknown]> = [
    ['runtimeConfig.name', conf.runtimeConfig.name],
    ['args.cni.name', cniArgsArea(conf).name],
    ['CNI_ARGS K8S_POD_NAME', env.args.get('K8S_POD_NAME') || undefined],
  ];
  const found = sources.find(([, v]) => v !== undefined);
  if (!found) return undefined;
  const [from, name] = found;
  if (typeof name !== 'string' || name.length > NAME_MAX_CHARS || !NAME_PATTERN.test(name)) {
    throw new CniError(
      ErrorCode.INVALID_NETWORK_CONFIG,
      `invalid endpoint name ${show(name)} in ${from} for network ${conf.network}: must start with a letter or digit and contain only letters, digits, "_", "." and "-" (at most ${NAME_MAX_CHARS})`,
    );
  }
  return name;
}
