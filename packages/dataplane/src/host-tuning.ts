/**
 * Host sysctls the data plane depends on: IPv4 and IPv6 forwarding (egress through the gateway bridge)
 * and the neighbour table thresholds (large overlays), for ARP and NDP alike.
 *
 * `net.ipv4.neigh.default.gc_thresh{1,2,3}` exist only in the initial network namespace, and the limit
 * they set is one counter for the whole machine, across all namespaces. Checked on kernel 6.18: 10 001
 * permanent entries were added in one namespace with gc_thresh3 = 1024 — permanent entries (every
 * programmed peer) do not count — while dynamic entries (what containers learn by ARP, one per peer a
 * container talks to, summed over all containers of the machine) hit "No buffer space available" at
 * about 1024. So the thresholds are raised (never lowered) to libnetwork's values where writable; where
 * the host namespace is not the initial one the keys do not exist and this is logged, not fatal.
 */

import type { Logger } from 'pino';
import type { ResolvedConfig } from './config.ts';
import { commandIn, runCommand, showCommand } from './iproute2.ts';

/**
 * libnetwork's values (drivers/overlay/ov_utils + osl), raised from the kernel defaults 128/512/1024;
 * the same for the IPv6 table (containers learn IPv6 peers by NDP, one dynamic entry each, like ARP).
 */
export const NEIGH_GC_THRESHOLDS: Readonly<Record<string, number>> = {
  'net.ipv4.neigh.default.gc_thresh1': 8192,
  'net.ipv4.neigh.default.gc_thresh2': 49152,
  'net.ipv4.neigh.default.gc_thresh3': 65536,
  'net.ipv6.neigh.default.gc_thresh1': 8192,
  'net.ipv6.neigh.default.gc_thresh2': 49152,
  'net.ipv6.neigh.default.gc_thresh3': 65536,
};

/** `net.ipv6.conf.<if>.accept_ra` value that keeps accepting router advertisements with forwarding on. */
const ACCEPT_RA_EVEN_WHEN_FORWARDING = 2;
const IPV6_FORWARDING_KEY = 'net.ipv6.conf.all.forwarding';
const ACCEPT_RA_KEYS = /^net\.ipv6\.conf\.([^.]+)\.accept_ra$/;

export interface SysctlOutcome {
  readonly key: string;
  readonly before?: number;
  readonly after?: number;
  /** Why nothing was written, when nothing was. */
  readonly skipped?: string;
}

/** Reads the keys in the host namespace; a key that does not exist there is absent from the result. */
export async function readSysctls(config: ResolvedConfig, keys: readonly string[]): Promise<Map<string, number>> {
  const cmd = commandIn(config.host, 'sysctl', ['-e', ...keys]);
  const r = await runCommand(cmd[0], cmd[1]);
  if (r.failure) throw new Error(`${showCommand(cmd)}: ${r.failure}`);
  const values = new Map<string, number>();
  for (const line of r.stdout.split('\n')) {
    const m = /^(\S+)\s*=\s*(\S+)/.exec(line);
    if (m && Number.isFinite(Number(m[2]))) values.set(m[1]!, Number(m[2]));
  }
  return values;
}

/** Writes `key=value` in the host namespace; rejects with the tool's message on failure. */
export async function writeSysctl(config: ResolvedConfig, key: string, value: number): Promise<void> {
  const cmd = commandIn(config.host, 'sysctl', ['-w', `${key}=${value}`]);
  const r = await runCommand(cmd[0], cmd[1]);
  if (r.failure || r.code !== 0) throw new Error(`${showCommand(cmd)}: ${r.failure ?? r.stderr.trim()}`);
}

/** Raises the neighbour thresholds to {@link NEIGH_GC_THRESHOLDS} where lower; never throws. */
export async function raiseNeighbourThresholds(config: ResolvedConfig, logger: Logger): Promise<SysctlOutcome[]> {
  const keys = Object.keys(NEIGH_GC_THRESHOLDS);
  let current: Map<string, number>;
  try {
    current = await readSysctls(config, keys);
  } catch (err) {
    logger.warn({ err }, 'cannot read neighbour table thresholds');
    return keys.map((key) => ({ key, skipped: (err as Error).message }));
  }
  const outcomes: SysctlOutcome[] = [];
  for (const key of keys) {
    const want = NEIGH_GC_THRESHOLDS[key]!;
    const before = current.get(key);
    if (before === undefined) {
      outcomes.push({ key, skipped: `not present in host netns ${config.hostLabel} (it exists only in the initial netns)` });
    } else if (before >= want) {
      outcomes.push({ key, before, after: before, skipped: 'already high enough' });
    } else {
      try {
        await writeSysctl(config, key, want);
        outcomes.push({ key, before, after: want });
      } catch (err) {
        outcomes.push({ key, before, skipped: (err as Error).message });
      }
    }
  }
  const raised = outcomes.filter((o) => o.skipped === undefined);
  const notPresent = outcomes.filter((o) => o.before === undefined);
  if (raised.length > 0) logger.info({ sysctls: raised }, 'raised neighbour table thresholds for large overlays');
  if (notPresent.length > 0) {
    logger.info({ netns: config.hostLabel }, 'neighbour table thresholds are not settable here (only in the initial netns); left as they are');
  }
  for (const o of outcomes) {
    if (o.skipped && o.before !== undefined && o.after === undefined) logger.warn({ key: o.key, reason: o.skipped }, 'cannot raise neighbour table threshold');
  }
  return outcomes;
}

/**
 * Turns IPv6 forwarding on in the host namespace (`net.ipv6.conf.all.forwarding=1`) for IPv6 egress,
 * without costing the host its own IPv6 routes: with forwarding on, Linux ignores router advertisements
 * on every interface whose `accept_ra` is 1 (router behaviour), so a host that got its IPv6 default
 * route by SLAAC would lose it when the route expires. Every interface with `accept_ra = 1` is first set
 * to 2 (accept even when forwarding), which is what it did before. Nothing changes when forwarding is
 * already on (whoever turned it on decided). Returns the interfaces switched to 2.
 */
export async function enableIpv6Forwarding(config: ResolvedConfig, logger: Logger): Promise<string[]> {
  const current = await readSysctls(config, [IPV6_FORWARDING_KEY]);
  if (current.get(IPV6_FORWARDING_KEY) === 1) return [];
  const cmd = commandIn(config.host, 'sysctl', ['-a', '--pattern', ACCEPT_RA_KEYS.source]);
  const r = await runCommand(cmd[0], cmd[1]);
  if (r.failure || r.code !== 0) throw new Error(`${showCommand(cmd)}: ${r.failure ?? r.stderr.trim()}`);
  const switched: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /^(\S+)\s*=\s*(\S+)/.exec(line);
    const ifname = m ? ACCEPT_RA_KEYS.exec(m[1]!)?.[1] : undefined;
    if (!m || !ifname || ifname === 'all' || ifname === 'default' || ifname === 'lo' || Number(m[2]) !== 1) continue;
    await writeSysctl(config, m[1]!, ACCEPT_RA_EVEN_WHEN_FORWARDING);
    switched.push(ifname);
  }
  await writeSysctl(config, IPV6_FORWARDING_KEY, 1);
  logger.info({ netns: config.hostLabel, acceptRa2: switched }, 'turned on IPv6 forwarding for IPv6 egress (router advertisements still accepted where they were)');
  return switched;
}
