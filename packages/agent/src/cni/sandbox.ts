/**
 * What a container's network namespace holds, read from the kernel: its interfaces (MAC, MTU, up,
 * IPv4 addresses) and its IPv4 routes. The CNI face reports it in an ADD's result (the egress
 * interface's MAC is the kernel's own, nobody records it) and a CHECK compares it with the attachment.
 *
 * One process per read: `nsenter --net=PATH ip -json -batch -` with `addr show` and `route show`
 * (iproute2 prints one JSON array per command, one per line). `ip -n` takes only names under
 * /run/netns; runtimes hand out paths (podman's /run/netns/netns-<uuid>, containerd's, /proc/<pid>/ns/net).
 */

import { execFile } from 'node:child_process';
import { isNetns } from '@kvnet/dataplane';

/** A sandbox read is killed after this long. */
export const SANDBOX_READ_TIMEOUT_MS = 10_000;

/** One interface inside the sandbox. */
export interface SandboxInterface {
  readonly name: string;
  /** Lowercase `aa:bb:…`. */
  readonly mac: string;
  readonly mtu: number;
  /** Administratively up (IFF_UP). */
  readonly up: boolean;
  /** IPv4 addresses, `ip/len`. */
  readonly addresses: readonly string[];
}

/** One IPv4 route of the sandbox's main table. */
export interface SandboxRoute {
  /** `0.0.0.0/0` for the default route, else `ip/len`. */
  readonly dst: string;
  readonly gateway?: string;
  readonly dev?: string;
}

export interface SandboxState {
  readonly interfaces: readonly SandboxInterface[];
  readonly routes: readonly SandboxRoute[];
}

export { isNetns };

interface IpAddrJson {
  ifname?: string;
  address?: string;
  mtu?: number;
  flags?: string[];
  addr_info?: Array<{ family?: string; local?: string; prefixlen?: number }>;
}

interface IpRouteJson {
  dst?: string;
  gateway?: string;
  dev?: string;
}

/** Pure: the two JSON arrays of `ip -json -batch` (`addr show`, `route show`) → {@link SandboxState}. */
export function parseSandbox(addrJson: string, routeJson: string): SandboxState {
  const addrs = JSON.parse(addrJson) as IpAddrJson[];
  const routes = JSON.parse(routeJson) as IpRouteJson[];
  return {
    interfaces: addrs
      .filter((l) => typeof l.ifname === 'string')
      .map((l) => ({
        name: l.ifname!,
        mac: (l.address ?? '').toLowerCase(),
        mtu: l.mtu ?? 0,
        up: (l.flags ?? []).includes('UP'),
        addresses: (l.addr_info ?? []).filter((a) => a.family === 'inet' && a.local).map((a) => `${a.local}/${a.prefixlen ?? 32}`),
      })),
    routes: routes
      .filter((r) => typeof r.dst === 'string')
      .map((r) => ({
        dst: r.dst === 'default' ? '0.0.0.0/0' : r.dst!.includes('/') ? r.dst! : `${r.dst}/32`,
        ...(r.gateway ? { gateway: r.gateway } : {}),
        ...(r.dev ? { dev: r.dev } : {}),
      })),
  };
}

/**
 * Reads the sandbox at `path`; undefined when it is not a network namespace (any more). Rejects when
 * iproute2 fails inside an existing one (the message says what it printed).
 */
export async function readSandbox(path: string, timeoutMs = SANDBOX_READ_TIMEOUT_MS): Promise<SandboxState | undefined> {
  if (!isNetns(path)) return undefined;
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = execFile('nsenter', [`--net=${path}`, 'ip', '-json', '-batch', '-'], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, out, errOut) => {
      if (err) reject(new Error(`cannot read netns ${path}: ${String(errOut).trim() || err.message}`));
      else resolve(String(out));
    });
    child.stdin?.on('error', () => undefined);
    child.stdin?.end('addr show\nroute show\n');
  });
  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  if (lines.length < 2) {
    if (!isNetns(path)) return undefined; // gone while we read it
    throw new Error(`cannot read netns ${path}: ip printed ${lines.length} of 2 answers`);
  }
  return parseSandbox(lines[0]!, lines[1]!);
}
