/**
 * Host routes that make a CNI container's overlay address reachable from its own host, through the
 * container's gateway bridge interface: `<overlay ip>/32 via <egress ip> dev <gateway bridge> proto 107`.
 *
 * Why: the standard `portmap` plugin publishes a port by DNAT to the first address of the CNI result on
 * `CNI_IFNAME` — the overlay address. The host has no route into an overlay (it lives in the network's
 * overlay namespace, as in Docker's overlay, where published ports go to the docker_gwbridge address
 * instead), so without this route the DNATed packets leave by the host's default route and are lost.
 * The container accepts a packet for its overlay address on its egress interface (Linux answers for any
 * local address on any interface) and replies through its default route, the same interface, so the
 * host's connection tracking undoes the DNAT. Isolation is unchanged: traffic from the gateway bridge back
 * into it stays dropped (the data plane's FORWARD rule), so containers of other networks still cannot
 * reach it this way. Internal networks have no egress interface and get no route.
 *
 * The routes are this face's own kernel state, marked with {@link HOST_ROUTE_PROTO} on the gateway
 * bridge: the data plane does not model host routes. A pure planner ({@link planHostRoutes}) and a thin
 * executor (one `ip -batch`), like the data plane's.
 */

import { execFile } from 'node:child_process';
import { endpointsOfNode, type ClusterView } from '../cluster-view.ts';

/**
 * The routing protocol number (`ip route … proto N`) that marks kvnet's host routes. Unassigned in
 * iproute2's rt_protos table (0-18, 42, 99, 186-192 are taken there).
 */
export const HOST_ROUTE_PROTO = 107;
/** One `ip` run is killed after this long. */
export const HOST_ROUTE_COMMAND_TIMEOUT_MS = 10_000;

/** One host route: `dst` (`ip/32`) via `via` on the gateway bridge. */
export interface HostRoute {
  readonly dst: string;
  readonly via: string;
}

export interface HostRoutePlan {
  readonly add: readonly HostRoute[];
  readonly remove: readonly HostRoute[];
  /** Routes not wanted now but kept until the next plan (see {@link planHostRoutes}). */
  readonly suspects: ReadonlySet<string>;
}

const key = (r: HostRoute): string => `${r.dst} via ${r.via}`;

/**
 * Pure: the routes this host wants — one per local CNI endpoint that has a gateway bridge address
 * (`egressOf` answers for it), to the endpoint's address.
 */
export function desiredHostRoutes(view: ClusterView, node: string, egressOf: (eid: string) => { readonly address: string } | undefined): HostRoute[] {
  const routes: HostRoute[] = [];
  for (const e of endpointsOfNode(view, node)) {
    if (!e.cni || !e.netns) continue;
    const net = view.networks.get(e.network);
    if (!net || net.internal) continue;
    const egress = egressOf(e.id);
    if (egress) routes.push({ dst: `${e.ip}/32`, via: egress.address.split('/')[0]! });
  }
  return routes.sort((a, b) => key(a).localeCompare(key(b)));
}

/**
 * Pure: what to change. Missing routes are added at once. A route the kernel has but `desired` lacks is
 * removed only when the previous plan already found it unwanted (`suspects`): an attachment writes its
 * route as soon as it exists, which can be a moment before a plan made from an older view would know it.
 */
export function planHostRoutes(desired: readonly HostRoute[], actual: readonly HostRoute[], suspects: ReadonlySet<string>): HostRoutePlan {
  const want = new Map(desired.map((r) => [key(r), r]));
  const have = new Map(actual.map((r) => [key(r), r]));
  const add = [...want.values()].filter((r) => !have.has(key(r)));
  const remove: HostRoute[] = [];
  const next = new Set<string>();
  for (const [k, r] of have) {
    if (want.has(k)) continue;
    if (suspects.has(k)) remove.push(r);
    else next.add(k);
  }
  return { add, remove, suspects: next };
}

/** `ip -json route show proto N dev BRIDGE` → the routes (pure). */
export function parseHostRoutes(json: string): HostRoute[] {
  const rows = JSON.parse(json) as Array<{ dst?: string; gateway?: string }>;
  return rows
    .filter((r) => r.dst && r.gateway)
    .map((r) => ({ dst: r.dst!.includes('/') ? r.dst! : `${r.dst}/32`, via: r.gateway! }));
}

function ip(args: readonly string[], input?: string): Promise<{ stdout: string; stderr: string; ok: boolean }> {
  return new Promise((resolve) => {
    const child = execFile('ip', [...args], { timeout: HOST_ROUTE_COMMAND_TIMEOUT_MS }, (err, stdout, stderr) =>
      resolve({ stdout: String(stdout), stderr: String(stderr).trim() || (err ? err.message : ''), ok: !err }),
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

/** The kvnet host routes on `bridge` (none when the bridge does not exist). */
export async function readHostRoutes(bridge: string): Promise<HostRoute[]> {
  const r = await ip(['-json', 'route', 'show', 'proto', String(HOST_ROUTE_PROTO), 'dev', bridge]);
  if (!r.ok) {
    if (/does not exist|Cannot find device/.test(r.stderr)) return [];
    throw new Error(`cannot list host routes on ${bridge}: ${r.stderr}`);
  }
  return r.stdout.trim() ? parseHostRoutes(r.stdout) : [];
}

/** Applies a plan in one `ip -batch` (`replace` and `del` are idempotent); resolves with the lines that failed. */
export async function applyHostRoutes(bridge: string, add: readonly HostRoute[], remove: readonly HostRoute[]): Promise<string[]> {
  const lines = [
    ...remove.map((r) => `route del ${r.dst} via ${r.via} dev ${bridge} proto ${HOST_ROUTE_PROTO}`),
    ...add.map((r) => `route replace ${r.dst} via ${r.via} dev ${bridge} proto ${HOST_ROUTE_PROTO}`),
  ];
  if (lines.length === 0) return [];
  const r = await ip(['-force', '-batch', '-'], `${lines.join('\n')}\n`);
  if (r.ok) return [];
  // A `del` of a route already gone is success for us.
  return r.stderr
    .split('\n')
    .filter((l) => l.trim() && !/^Command failed/.test(l) && !/No such process/.test(l));
}
