/**
 * Simulated hosts for data plane and agent tests: network namespaces on one underlay, all on this machine.
 *
 * ```ts
 * const sim = await createSimNetwork({ hosts: 2, prefix: runId(), outside: true });
 * const c1 = await sim.addContainer(sim.hosts[0]!, 'c1');        // netns `${prefix}c1`, path /run/netns/…
 * await sim.ping(c1.name, '10.0.1.3');                            // → boolean
 * await sim.destroy();                                            // idempotent; also runs at process exit
 * ```
 *
 * Layout (every name starts with `prefix`; give each test run a unique one, e.g. `runId()`):
 * - `<prefix>u`: the underlay namespace holding bridge `ul0` (its own namespace, so the root namespace's
 *   FORWARD policy and br_netfilter never see the traffic);
 * - `<prefix>h<i>` (i = 1…n, at most {@link MAX_SIM_HOSTS}; built 8 at a time): host namespaces, each with
 *   `eth0` on the underlay at 198.18.<i / 256>.<i % 256>/15
 *   (with `ipv6: true` also 2001:2::<i in hex>/64), lo up, net.ipv4.ip_forward=1;
 * - `<prefix>x` (with `outside: true`): an "outside" namespace at {@link OUTSIDE_ADDRESS}/15 (and
 *   {@link OUTSIDE_ADDRESS6}/64 with `ipv6`) on the same underlay, with no route to anything else — a
 *   reply reaches a container only if its host masquerades;
 * - `<prefix><name>`: "containers" made by `addContainer` (lo up, nothing else).
 *
 * `destroy()` deletes every namespace under /run/netns whose name starts with `prefix` — including
 * those a data plane under test made with a prefix that starts with the same characters — so a test
 * that fails half-way still leaves nothing behind. Only 198.18.0.0/15 addresses are used, and with
 * `ipv6` addresses of 2001:2::/48 (RFC 5180's IPv6 benchmarking range, the counterpart of 198.18.0.0/15).
 * `underlayMtu` sets the MTU of every underlay link (host `eth0`s, the bridge and its ports), as a
 * smaller-than-Ethernet underlay (a tunnel, a cloud network) would have.
 */

import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { run, type RunResult } from './process.ts';

/** Underlay addresses: host i is 198.18.<i / 256>.<i % 256>. */
export const UNDERLAY_PREFIX_LENGTH = 15;
/** The address of the outside namespace. */
export const OUTSIDE_ADDRESS = '198.19.255.254';
/** The IPv6 address of the outside namespace (with `ipv6: true`). */
export const OUTSIDE_ADDRESS6 = '2001:2::ffff';
/** Prefix length of the IPv6 underlay (2001:2::/64 inside RFC 5180's 2001:2::/48). */
export const UNDERLAY_PREFIX_LENGTH6 = 64;
const COMMAND_TIMEOUT_MS = 15_000;
const NETNS_DIR = '/run/netns';
/** Most hosts one simulated network holds (host i is 198.18.<i / 256>.<i % 256>, far inside the /15). */
export const MAX_SIM_HOSTS = 1295;
/** Hosts built at the same time (each is a handful of `ip` runs; more only queues on the machine's cores). */
const HOST_BUILD_CONCURRENCY = 8;
/** Namespaces deleted per `ip -batch` process at teardown (one process per namespace costs ~5 ms each). */
const NETNS_DEL_BATCH = 200;

export interface SimHost {
  /** Netns name (under /run/netns). */
  readonly name: string;
  /** 1-based. */
  readonly index: number;
  /** Underlay IPv4 address (the VTEP). */
  readonly address: string;
  /** Underlay IPv6 address (an IPv6 VTEP), with `ipv6: true`. */
  readonly address6?: string;
  readonly path: string;
}

export interface SimContainer {
  /** Netns name (under /run/netns). */
  readonly name: string;
  /** Absolute netns path, as a sandbox path. */
  readonly path: string;
  readonly host: SimHost;
}

export interface SimNetwork {
  readonly prefix: string;
  /** The underlay namespace's name. */
  readonly underlay: string;
  readonly hosts: readonly SimHost[];
  /** The outside namespace, when asked for (`address6` with `ipv6: true`). */
  readonly outside?: { readonly name: string; readonly address: string; readonly address6?: string };
  /** MTU of the underlay links (1500 unless `underlayMtu` was given). */
  readonly underlayMtu: number;
  /** A new "container" namespace `<prefix><name>` (lo up), associated with `host`. */
  addContainer(host: SimHost, name: string): Promise<SimContainer>;
  /** Deletes a container namespace (its veths go with it). */
  removeContainer(container: SimContainer): Promise<void>;
  /** Runs `command args…` inside netns `ns` (a name); never rejects on a non-zero exit. */
  exec(ns: string, command: string, ...args: string[]): Promise<RunResult>;
  /** Whether `ip` answers one ping from netns `fromNs` within `waitS` seconds (default 1), trying `tries` times (default 1). */
  ping(fromNs: string, ip: string, options?: { waitS?: number; tries?: number }): Promise<boolean>;
  /** Removes everything: every netns whose name starts with the prefix. Idempotent. */
  destroy(): Promise<void>;
}

const live = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const prefix of live) sweepSync(prefix);
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const prefix of live) sweepSync(prefix);
      process.exit(130);
    });
  }
}

function namespacesWithPrefix(prefix: string): string[] {
  try {
    return readdirSync(NETNS_DIR).filter((n) => n.startsWith(prefix));
  } catch {
    return [];
  }
}

function sweepSync(prefix: string): void {
  const doomed = namespacesWithPrefix(prefix);
  for (let i = 0; i < doomed.length; i += NETNS_DEL_BATCH) {
    try {
      const input = doomed.slice(i, i + NETNS_DEL_BATCH).map((ns) => `netns del ${ns}\n`).join('');
      execFileSync('ip', ['-force', '-batch', '-'], { input, stdio: ['pipe', 'ignore', 'ignore'], timeout: COMMAND_TIMEOUT_MS * 4 });
    } catch {
      // some already gone: -force went on with the rest
    }
  }
}


async function ip(...args: string[]): Promise<void> {
  await run('ip', args, { timeoutMs: COMMAND_TIMEOUT_MS });
}

async function addNamespace(name: string): Promise<void> {
  await ip('netns', 'add', name);
  await ip('-n', name, 'link', 'set', 'dev', 'lo', 'up');
}

/**
 * Adds namespace `ns` to the underlay of `sim` as one more machine at `address` (its `eth0`, a veth whose
 * underlay end is `port`), e.g. for a KV server the simulated hosts reach. Its name must start with the
 * network's prefix, so `destroy()` removes it.
 */
export async function attachNamespace(sim: SimNetwork, ns: string, port: string, address: string): Promise<void> {
  if (!ns.startsWith(sim.prefix)) throw new Error(`namespace ${ns} must start with the network's prefix ${sim.prefix}`);
  await addNamespace(ns);
  await ip('link', 'add', 'name', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', port, 'netns', sim.underlay);
  await ip('-n', sim.underlay, 'link', 'set', 'dev', port, 'master', 'ul0', 'up');
  await ip('-n', ns, 'addr', 'add', `${address}/${UNDERLAY_PREFIX_LENGTH}`, 'dev', 'eth0');
  await ip('-n', ns, 'link', 'set', 'dev', 'eth0', 'up');
}

/** MTU of underlay links unless `underlayMtu` is given. */
const DEFAULT_UNDERLAY_MTU = 1500;

/** Builds the underlay, `hosts` host namespaces and optionally the outside namespace. */
export async function createSimNetwork(options: {
  hosts: number;
  prefix: string;
  outside?: boolean;
  /** Give hosts (and the outside) IPv6 underlay addresses too, in 2001:2::/64. */
  ipv6?: boolean;
  /** MTU of every underlay link; default 1500. */
  underlayMtu?: number;
}): Promise<SimNetwork> {
  const { prefix } = options;
  const mtu = options.underlayMtu ?? DEFAULT_UNDERLAY_MTU;
  if (!Number.isInteger(mtu) || mtu < 1280 || mtu > 9000) throw new Error(`underlayMtu must be 1280…9000, not ${mtu}`);
  if (!/^[a-z0-9]{1,8}$/.test(prefix)) throw new Error(`sim prefix ${JSON.stringify(prefix)} must be 1-8 lowercase letters or digits`);
  if (options.hosts < 1 || options.hosts > MAX_SIM_HOSTS) throw new Error(`hosts must be 1…${MAX_SIM_HOSTS}, not ${options.hosts}`);
  if (namespacesWithPrefix(prefix).length > 0) throw new Error(`namespaces starting with ${prefix} already exist; use a unique prefix`);
  installExitHook();
  live.add(prefix);
  const underlay = `${prefix}u`;
  const hosts: SimHost[] = [];
  let outside: SimNetwork['outside'];

  const attach = async (ns: string, port: string, address: string, address6?: string): Promise<void> => {
    const m = String(mtu);
    await ip('link', 'add', 'name', 'eth0', 'netns', ns, 'mtu', m, 'type', 'veth', 'peer', 'name', port, 'netns', underlay, 'mtu', m);
    await ip('-n', underlay, 'link', 'set', 'dev', port, 'master', 'ul0', 'up');
    await ip('-n', ns, 'addr', 'add', `${address}/${UNDERLAY_PREFIX_LENGTH}`, 'dev', 'eth0');
    // nodad: the address is usable at once (duplicate address detection would hold it for ~1 s)
    if (address6) await ip('-n', ns, 'addr', 'add', `${address6}/${UNDERLAY_PREFIX_LENGTH6}`, 'dev', 'eth0', 'nodad');
    await ip('-n', ns, 'link', 'set', 'dev', 'eth0', 'up');
  };

  try {
    await addNamespace(underlay);
    await ip('-n', underlay, 'link', 'add', 'name', 'ul0', 'mtu', String(mtu), 'type', 'bridge');
    await ip('-n', underlay, 'link', 'set', 'dev', 'ul0', 'up');
    const indexes = Array.from({ length: options.hosts }, (_, k) => k + 1);
    let next = 0;
    const builder = async (): Promise<void> => {
      while (next < indexes.length) {
        const i = indexes[next++]!;
        const name = `${prefix}h${i}`;
        const address = `198.18.${Math.floor(i / 256)}.${i % 256}`;
        const address6 = options.ipv6 ? `2001:2::${i.toString(16)}` : undefined;
        await addNamespace(name);
        await attach(name, `p${i}`, address, address6);
        await run('nsenter', [`--net=${NETNS_DIR}/${name}`, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'], { timeoutMs: COMMAND_TIMEOUT_MS });
        hosts[i - 1] = { name, index: i, address, ...(address6 ? { address6 } : {}), path: `${NETNS_DIR}/${name}` };
      }
    };
    await Promise.all(Array.from({ length: Math.min(HOST_BUILD_CONCURRENCY, indexes.length) }, builder));
    if (options.outside) {
      const name = `${prefix}x`;
      await addNamespace(name);
      await attach(name, 'px', OUTSIDE_ADDRESS, options.ipv6 ? OUTSIDE_ADDRESS6 : undefined);
      outside = { name, address: OUTSIDE_ADDRESS, ...(options.ipv6 ? { address6: OUTSIDE_ADDRESS6 } : {}) };
    }
  } catch (err) {
    sweepSync(prefix);
    live.delete(prefix);
    throw err;
  }

  const exec = (ns: string, command: string, ...args: string[]): Promise<RunResult> =>
    run('nsenter', [`--net=${NETNS_DIR}/${ns}`, command, ...args], { allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });

  return {
    prefix,
    underlay,
    hosts,
    ...(outside ? { outside } : {}),
    underlayMtu: mtu,
    async addContainer(host, name) {
      const ns = `${prefix}${name}`;
      await addNamespace(ns);
      return { name: ns, path: `${NETNS_DIR}/${ns}`, host };
    },
    async removeContainer(container) {
      await run('ip', ['netns', 'del', container.name], { allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
    },
    exec,
    async ping(fromNs, target, opts = {}) {
      const tries = opts.tries ?? 1;
      for (let i = 0; i < tries; i++) {
        const r = await exec(fromNs, 'ping', '-c', '1', '-W', String(opts.waitS ?? 1), '-n', '-q', target);
        if (r.code === 0) return true;
      }
      return false;
    },
    async destroy() {
      const doomed = namespacesWithPrefix(prefix);
      for (let i = 0; i < doomed.length; i += NETNS_DEL_BATCH) {
        const lines = doomed.slice(i, i + NETNS_DEL_BATCH).map((ns) => `netns del ${ns}\n`).join('');
        await run('ip', ['-force', '-batch', '-'], { input: lines, allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS * 4 });
      }
      live.delete(prefix);
    },
  };
}
