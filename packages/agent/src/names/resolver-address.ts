/**
 * The kernel side of the resolver address: the address on `lo` in each overlay namespace and in the
 * host namespace, and the route to it in a container's sandbox. Thin executors over `ip` (through `nsenter`
 * for a namespace given by path); every verb is idempotent (`replace`), so running one twice is harmless.
 *
 * Where the address goes, and why not on br0 as first planned: the data plane reconciles br0's
 * addresses and deletes every one it did not put there (packages/dataplane/src/plan.ts, planNetwork), so
 * an address added beside it would be gone after the next apply. The overlay namespace's `lo` is never
 * touched by the data plane, and Linux answers ARP on br0 for an address held by any interface of the
 * namespace (arp_ignore 0, the default), so containers reach it over br0 all the same. `lo` must be up
 * for the address's local route to exist; a new namespace has it down.
 *
 * In the host namespace the address goes on `lo` too, not on a dummy link of its own: this machine's
 * kernel has no dummy driver (`ip link add … type dummy` → "Unknown device type"), and a container on
 * Docker's bridge reaches an address on the host's `lo` by its default route all the same.
 */

import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { isNetns } from '@kvnet/dataplane';
import { ListenerError } from './errors.ts';

/** Any one `ip`/`nsenter` invocation; they normally take a few milliseconds. */
export const IP_COMMAND_TIMEOUT_MS = 10_000;
/** Docker's route type for a connected route in a Join answer's StaticRoutes (libnetwork types.CONNECTED). */
export const ROUTE_TYPE_CONNECTED = 1;

function run(command: string, args: readonly string[], input?: string): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { timeout: IP_COMMAND_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && code === -1 ? err.message : '') });
    });
    child.stdin?.on('error', () => {}); // ip may exit before reading everything
    child.stdin?.end(input);
  });
}

async function ipIn(netnsPath: string | undefined, lines: readonly string[], what: string): Promise<void> {
  const argv = ['ip', '-batch', '-'];
  const r = netnsPath ? await run('nsenter', [`--net=${netnsPath}`, ...argv], lines.join('\n') + '\n') : await run(argv[0]!, argv.slice(1), lines.join('\n') + '\n');
  if (r.code !== 0) throw new ListenerError(`${what}: ${r.stderr.trim() || `ip exited ${r.code}`}`);
}


/**
 * The namespace's identity (nsfs inode); undefined when the path holds no namespace: gone, or the plain
 * file `ip netns add` makes before its bind mount is in place (taking that file's inode for the namespace
 * would open a listener that is torn down again a moment later). A re-created namespace at the same path
 * has another identity.
 */
export function netnsIdentity(netnsPath: string): string | undefined {
  if (!isNetns(netnsPath)) return undefined;
  try {
    const st = statSync(netnsPath);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * Puts `address`/32 on `lo` of the namespace at `netnsPath` (undefined: this process's own) and
 * brings `lo` up.
 */
export async function ensureLoopbackAddress(netnsPath: string | undefined, address: string): Promise<void> {
  await ipIn(netnsPath, ['link set dev lo up', `address replace ${address}/32 dev lo`], `cannot put resolver address ${address} on lo in ${netnsPath ?? 'the host namespace'}`);
}

/** Removes `address`/32 from `lo` of the namespace (undefined: this process's own), if it is there. Never throws. */
export async function removeLoopbackAddress(netnsPath: string | undefined, address: string): Promise<void> {
  const argv = ['ip', 'address', 'del', `${address}/32`, 'dev', 'lo'];
  await (netnsPath ? run('nsenter', [`--net=${netnsPath}`, ...argv]) : run(argv[0]!, argv.slice(1)));
}

/**
 * Standalone sandboxes (`kvnet network connect --netns`, CNI): the connected route to the resolver
 * address through the sandbox's kvnet interface `ifname` (the {@link routeHolder}'s). `replace`, so
 * moving it to another interface when the holder leaves is the same call. Throws `ListenerError` with ip's message.
 */
export async function ensureSandboxRoute(sandboxPath: string, ifname: string, address: string): Promise<void> {
  await ipIn(sandboxPath, [`route replace ${address}/32 dev ${ifname} scope link`], `cannot add the route to resolver address ${address} via ${ifname} in ${sandboxPath}`);
}

/**
 * A Docker sandbox whose route holder left: the connected route to the resolver address through the
 * interface with MAC `mac` (dockerd chose its name, `ethN`, so it is found by its MAC). A SandboxKey is
 * a netns bind mount made in dockerd's mount namespace; when this process does not see it (an agent in
 * a container, or beside a dockerd in a mount namespace of its own) and `dockerdPid` is given, the
 * commands enter dockerd's mount namespace first and open the sandbox there. Resolves with the
 * interface name; throws `ListenerError` naming the sandbox when it cannot be entered, has no such
 * interface, or ip refuses.
 */
export async function ensureSandboxRouteByMac(sandboxPath: string, mac: string, address: string, dockerdPid?: number): Promise<string> {
  const enter = isNetns(sandboxPath) || dockerdPid === undefined ? ['nsenter', `--net=${sandboxPath}`] : ['nsenter', `--mount=/proc/${dockerdPid}/ns/mnt`, 'nsenter', `--net=${sandboxPath}`];
  const where = enter.length > 2 ? `sandbox ${sandboxPath} (in dockerd's mount namespace, pid ${dockerdPid})` : `sandbox ${sandboxPath}`;
  const r = await run(enter[0]!, [...enter.slice(1), 'ip', '-j', 'link', 'show']);
  if (r.code !== 0) throw new ListenerError(`cannot list the interfaces of ${where}: ${r.stderr.trim() || `nsenter exited ${r.code}`}`);
  let links: Array<{ ifname?: string; address?: string }> = [];
  try {
    links = JSON.parse(r.stdout) as typeof links;
  } catch {
    // handled below: no interface found
  }
  const ifname = links.find((l) => l.address?.toLowerCase() === mac.toLowerCase())?.ifname;
  if (!ifname) throw new ListenerError(`${where} has no interface with MAC ${mac} to route resolver address ${address} through`);
  const set = await run(enter[0]!, [...enter.slice(1), 'ip', 'route', 'replace', `${address}/32`, 'dev', ifname, 'scope', 'link']);
  if (set.code !== 0) throw new ListenerError(`cannot add the route to resolver address ${address} via ${ifname} in ${where}: ${set.stderr.trim() || `ip exited ${set.code}`}`);
  return ifname;
}

/**
 * Docker: the `StaticRoutes` of a Join answer that give the container the connected route to the
 * resolver address over the joining interface. Only for the sandbox's route holder: dockerd adds a
 * connected route with netlink's exclusive create, so a second kvnet interface asking for the same
 * /32 fails the whole join (moby v28.5.2 osl `setInterfaceRoutes`).
 */
export function joinStaticRoutes(address: string): Array<{ Destination: string; RouteType: number }> {
  return [{ Destination: `${address}/32`, RouteType: ROUTE_TYPE_CONNECTED }];
}
