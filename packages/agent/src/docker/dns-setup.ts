/**
 * Will this host's dockerd send its containers' DNS queries to kvnet's resolver? Two host settings
 * decide it, and neither is visible through the plugin protocol:
 *
 * 1. dockerd's `dns` (daemon.json `"dns": ["169.254.53.53"]`, or `dockerd --dns`): Docker's embedded
 *    resolver forwards every name it does not know to these servers, from inside the container's
 *    network namespace (names/README.md). Without the resolver address there, containers never ask kvnet.
 * 2. An `ndots` option in what dockerd builds its containers' resolv.conf from (the host's
 *    /etc/resolv.conf, or its `dns-opts`): Docker's embedded resolver then answers a single-label name
 *    it does not know (`c1`) itself, empty, and never forwards it (moby v28.5.2 `resolver.go`, "If the
 *    user sets ndots > 0 explicitly …", checked whatever the value, ndots:0 included, from
 *    `sandbox_dns_unix.go` `rebuildDNS`: `sb.ndotsSet = rc.Option("ndots")`). Found live: a node of the
 *    compose harness is itself a container on a user-defined network, whose resolv.conf Docker writes
 *    with `options ndots:0`. The remedy is daemon.json `"dns-opts"` without ndots (they replace the
 *    host's options), e.g. `["timeout:5"]`, glibc's default.
 * 3. The engine version: 26.0.0–26.1.2 forward nothing for containers only on `--internal` networks
 *    (the CVE-2024-29018 fix, relaxed again in 26.1.3; names/README.md has the release notes' numbers).
 *
 * {@link assessDockerDns} is pure; {@link readDockerDnsFacts} reads what it needs (the Engine API's
 * version; dockerd's command line and configuration file through /proc). Used by the agent's start-up
 * log and exported for `kvnet doctor`.
 */

import { readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { DEFAULT_DOCKER_SOCKET } from '../config.ts';
import type { DockerEngine } from './engine.ts';

/** dockerd's configuration file unless `--config-file` names another. */
export const DEFAULT_DAEMON_JSON = '/etc/docker/daemon.json';
/** Engine versions whose internal-only containers never have their DNS forwarded: [first, last]. */
export const NO_INTERNAL_FORWARDING: readonly [string, string] = ['26.0.0', '26.1.2'];

/** What is known about the local dockerd. */
export interface DockerDnsFacts {
  /** Engine version (`GET /version` → Version), when dockerd answered. */
  readonly version?: string;
  /** dockerd's `dns` servers (flags and configuration file), when its process could be found; `[]` when it has none. */
  readonly dns?: readonly string[];
  /** Where {@link dns} was read: the command line and/or the configuration file, or why it could not be. */
  readonly dnsSource: string;
  /** The `ndots` option dockerd's containers inherit, and where it comes from (absent: none, or unknown). */
  readonly ndots?: { readonly option: string; readonly from: string };
}

/** One problem, for people: what is wrong and what to do. */
export interface DockerDnsFinding {
  readonly level: 'error' | 'warn' | 'info';
  readonly code: 'KVNET_DOCKER_DNS_MISSING' | 'KVNET_DOCKER_DNS_UNKNOWN' | 'KVNET_DOCKER_DNS_NDOTS' | 'KVNET_DOCKER_INTERNAL_DNS' | 'KVNET_DOCKER_UNREACHABLE';
  readonly message: string;
}

function versionParts(v: string): number[] | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

function compareVersions(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

/** Pure: the findings for `facts` and the resolver `address`; empty when containers will reach it. */
export function assessDockerDns(facts: DockerDnsFacts, address: string): DockerDnsFinding[] {
  const out: DockerDnsFinding[] = [];
  if (facts.version === undefined) {
    out.push({ level: 'warn', code: 'KVNET_DOCKER_UNREACHABLE', message: `cannot ask the local dockerd for its version (${facts.dnsSource}); containers resolve names across hosts only with "dns": ["${address}"] in its daemon.json` });
  }
  if (facts.dns === undefined) {
    out.push({ level: 'info', code: 'KVNET_DOCKER_DNS_UNKNOWN', message: `cannot tell whether dockerd sends container DNS to kvnet (${facts.dnsSource}); make sure its daemon.json has "dns": ["${address}"]` });
  } else if (!facts.dns.includes(address)) {
    const now = facts.dns.length ? `its dns is ${JSON.stringify(facts.dns)}` : 'it has no dns setting';
    out.push({
      level: 'error',
      code: 'KVNET_DOCKER_DNS_MISSING',
      message: `dockerd will not send its containers' DNS queries to kvnet's resolver ${address} (${now}, read from ${facts.dnsSource}): containers resolve only names on their own host. Add "dns": ["${address}"] to /etc/docker/daemon.json (keep your other servers after it) and restart dockerd`,
    });
  }
  if (facts.ndots) {
    out.push({
      level: 'error',
      code: 'KVNET_DOCKER_DNS_NDOTS',
      message: `dockerd gives its containers "options ${facts.ndots.option}" (from ${facts.ndots.from}): Docker's resolver then answers single-label names it does not know (such as a container on another host, c1) itself, with no address, and never asks kvnet; only <name>.<network> resolves across hosts. Add "dns-opts" without ndots to /etc/docker/daemon.json (they replace the host's options), e.g. "dns-opts": ["timeout:5"], and restart dockerd`,
    });
  }
  const v = facts.version !== undefined ? versionParts(facts.version) : undefined;
  if (v && compareVersions(v, versionParts(NO_INTERNAL_FORWARDING[0])!) >= 0 && compareVersions(v, versionParts(NO_INTERNAL_FORWARDING[1])!) <= 0) {
    out.push({
      level: 'warn',
      code: 'KVNET_DOCKER_INTERNAL_DNS',
      message: `Docker ${facts.version} never forwards DNS queries of containers that are only on --internal networks (${NO_INTERNAL_FORWARDING[0]}–${NO_INTERNAL_FORWARDING[1]}, fixed in 26.1.3): such containers resolve only names on their own host. Upgrade Docker to 26.1.3 or later`,
    });
  }
  return out;
}

/** Parses dockerd's argv: its API hosts, `--dns` servers, `--dns-opt`s and `--config-file`. */
export function parseDockerdArgs(argv: readonly string[]): { hosts: string[]; dns: string[]; dnsOpts: string[]; configFile?: string } {
  const hosts: string[] = [];
  const dns: string[] = [];
  const dnsOpts: string[] = [];
  let configFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const [flag, inline] = a.startsWith('--') && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    if (flag === '-H' || flag === '--host') hosts.push(value() ?? '');
    else if (flag === '--dns') dns.push(value() ?? '');
    else if (flag === '--dns-opt') dnsOpts.push(value() ?? '');
    else if (flag === '--config-file') configFile = value();
  }
  return { hosts, dns, dnsOpts, ...(configFile !== undefined ? { configFile } : {}) };
}

/** Whether a dockerd with these `-H` values serves `socket`. No `-H`, or `fd://` (systemd socket activation), is the default socket. */
export function servesSocket(hosts: readonly string[], socket: string): boolean {
  const norm = (p: string): string => p.replace(/^\/var\/run\//, '/run/');
  if (hosts.length === 0 || hosts.some((h) => h.startsWith('fd://'))) {
    if (norm(socket) === norm(DEFAULT_DOCKER_SOCKET)) return true;
  }
  return hosts.some((h) => h.startsWith('unix://') && norm(h.slice('unix://'.length)) === norm(socket));
}

/** The dockerd process serving `socket` (in /proc), with its arguments; undefined when none is visible. */
export function findDockerd(socket: string, proc = '/proc'): { pid: number; args: ReturnType<typeof parseDockerdArgs> } | undefined {
  let pids: string[];
  try {
    pids = readdirSync(proc).filter((n) => /^\d+$/.test(n));
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let argv: string[];
    try {
      argv = readFileSync(`${proc}/${pid}/cmdline`, 'utf8').split('\0').filter((x) => x !== '');
    } catch {
      continue;
    }
    if (argv.length === 0 || basename(argv[0]!) !== 'dockerd') continue;
    const args = parseDockerdArgs(argv.slice(1));
    if (servesSocket(args.hosts, socket)) return { pid: Number(pid), args };
  }
  return undefined;
}

/**
 * dockerd's `dns`: the dockerd process serving `socket` is found in /proc (this agent must see the
 * host's processes: the systemd unit and the agent image with `--pid host` do); its `--dns` flags and
 * its configuration file's `dns`, read through `/proc/<pid>/root` (dockerd's own view of the files).
 */
/** The `options` of a resolv.conf text, and its nameservers. */
export function resolvConfOptions(text: string): { options: string[]; nameservers: string[] } {
  const options: string[] = [];
  const nameservers: string[] = [];
  for (const raw of text.split('\n')) {
    const words = raw.replace(/[#;].*$/, '').trim().split(/\s+/);
    if (words[0] === 'options') options.push(...words.slice(1));
    if (words[0] === 'nameserver' && words[1]) nameservers.push(words[1]);
  }
  return { options, nameservers };
}

/** systemd-resolved's stub: dockerd then reads the full list beside it (moby `resolvconf.Path()`). */
const RESOLVED_STUB = '127.0.0.53';
const RESOLVED_UPSTREAM_CONF = '/run/systemd/resolve/resolv.conf';

export function readDaemonDns(socket: string, proc = '/proc'): { dns?: string[]; source: string; ndots?: { option: string; from: string } } {
  const d = findDockerd(socket, proc);
  if (!d) return { source: `no dockerd process serving ${socket} is visible in ${proc}` };
  const file = d.args.configFile ?? DEFAULT_DAEMON_JSON;
  let fromFile: string[] = [];
  let optsFromFile: string[] | undefined;
  let source = `dockerd (pid ${d.pid}) command line`;
  const root = `${proc}/${d.pid}/root`;
  try {
    const json = JSON.parse(readFileSync(`${root}${file}`, 'utf8')) as { dns?: unknown; 'dns-opts'?: unknown };
    if (Array.isArray(json.dns)) fromFile = json.dns.filter((x): x is string => typeof x === 'string');
    if (Array.isArray(json['dns-opts'])) optsFromFile = json['dns-opts'].filter((x): x is string => typeof x === 'string');
    source += ` and ${file}`;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return { source: `${file} of dockerd (pid ${d.pid}) cannot be read: ${(err as Error).message}` };
    source += ` (no ${file})`;
  }
  // Options: dockerd's own (flags, configuration file) replace the host's resolv.conf options.
  let ndots: { option: string; from: string } | undefined;
  const own = [...d.args.dnsOpts, ...(optsFromFile ?? [])];
  if (own.length > 0) {
    const o = own.find((x) => x.startsWith('ndots:'));
    if (o) ndots = { option: o, from: `dockerd's dns-opts` };
  } else {
    for (const conf of ['/etc/resolv.conf', RESOLVED_UPSTREAM_CONF]) {
      let text: string;
      try {
        text = readFileSync(`${root}${conf}`, 'utf8');
      } catch {
        continue;
      }
      const rc = resolvConfOptions(text);
      if (conf === '/etc/resolv.conf' && rc.nameservers.length > 0 && rc.nameservers.every((n) => n === RESOLVED_STUB)) continue;
      const o = rc.options.find((x) => x.startsWith('ndots:'));
      if (o) ndots = { option: o, from: `the host's ${conf}` };
      break;
    }
  }
  return { dns: [...d.args.dns, ...fromFile], source, ...(ndots ? { ndots } : {}) };
}

/** Everything {@link assessDockerDns} needs, read from the Engine API and /proc. Never throws. */
export async function readDockerDnsFacts(engine: Pick<DockerEngine, 'version' | 'socketPath'>, signal?: AbortSignal): Promise<DockerDnsFacts> {
  let version: string | undefined;
  let unreachable = '';
  try {
    version = await engine.version(signal);
  } catch (err) {
    unreachable = (err as Error).message;
  }
  const daemon = readDaemonDns(engine.socketPath);
  return {
    ...(version !== undefined ? { version } : {}),
    ...(daemon.dns ? { dns: daemon.dns } : {}),
    dnsSource: unreachable ? `${unreachable}; ${daemon.source}` : daemon.source,
    ...(daemon.ndots ? { ndots: daemon.ndots } : {}),
  };
}
