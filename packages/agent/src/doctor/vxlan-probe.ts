/**
 * The VXLAN-path probe and the path MTU check, over the overlay itself.
 *
 * Why from a container's sandbox: every host's br0 carries the same gateway address, so a ping from an
 * overlay namespace would be answered by the remote host's own br0 (or its reply would never come
 * back). A local endpoint's sandbox has an address unique in the network: a ping from it to a remote
 * endpoint crosses the whole path — veth, br0, vxlan0 and its FDB/neighbour entries, UDP to the remote
 * VTEP, the remote host's vxlan0 and bridge, the remote container, and back through the remote host's
 * entries for us. So per network, one local endpoint whose sandbox exists pings up to
 * {@link TARGETS_PER_NODE} endpoints of each other node (`ping` inside the sandbox through `nsenter`;
 * nothing is changed anywhere). A node answers when any of them does. When none does, the node's VTEP
 * is pinged on the underlay from this host, to tell "UDP 4789 or the remote entries" from "the host is
 * unreachable". When a small ping passes, one full-size ping (overlay MTU) tests the path MTU: a link on the
 * way that takes less than the VXLAN packet (overlay MTU + 50) drops it.
 *
 * Limits: a node that shares no network with a local endpoint of this host is not probed; Docker's
 * endpoints have no sandbox path in their records, so a host with only Docker containers probes nothing
 * (doctor says so). A remote container that drops ICMP looks unreachable.
 */

import { execFile } from 'node:child_process';
import type { ClusterView } from '../cluster-view.ts';
import type { NodeProbe } from '../nodes.ts';
import type { DoctorFinding } from './report.ts';

/** Remote endpoints tried per (network, node) before the node counts as unreachable over that network. */
export const TARGETS_PER_NODE = 2;
/** Pings per target, their interval and reply timeout. */
const PINGS = 2;
const PING_INTERVAL_S = 0.2;
const PING_WAIT_S = 1;
/** Probes running at once. */
const PROBE_CONCURRENCY = 4;
/** IPv4 + ICMP headers: a ping of `mtu - 28` bytes fills one packet of the interface's MTU. */
const IPV4_ICMP_HEADER_BYTES = 28;

/** One probe to run: from a local sandbox to endpoints of one remote node on one network. */
export interface ProbeTarget {
  readonly nid: string;
  readonly network: string;
  readonly node: string;
  /** The remote node's VTEP. */
  readonly vtep: string;
  readonly from: { readonly endpoint: string; readonly netns: string };
  readonly to: ReadonlyArray<{ readonly endpoint: string; readonly ip: string }>;
}

/**
 * Pure: the probes to run. Per network, the first local endpoint (by name) whose sandbox `usable`
 * accepts; per remote node of that network, up to {@link TARGETS_PER_NODE} of its endpoints.
 */
export function chooseProbeTargets(view: ClusterView, self: string, usable: (netns: string) => boolean): { targets: ProbeTarget[]; skipped: string[] } {
  const targets: ProbeTarget[] = [];
  const skipped: string[] = [];
  for (const [nid, eps] of [...view.endpoints.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    const net = view.networks.get(nid);
    if (!net) continue;
    const all = [...eps.values()].sort((a, b) => a.name.localeCompare(b.name));
    const local = all.filter((e) => e.node === self);
    const remote = all.filter((e) => e.node !== self);
    if (local.length === 0 || remote.length === 0) continue;
    const from = local.find((e) => e.netns !== undefined && usable(e.netns));
    if (!from) {
      skipped.push(net.name);
      continue;
    }
    const byNode = new Map<string, typeof remote>();
    for (const e of remote) byNode.set(e.node, [...(byNode.get(e.node) ?? []), e]);
    for (const [node, list] of [...byNode.entries()].sort(([a], [b]) => a.localeCompare(b))) {
      const vtep = view.nodes.get(node)?.advertise ?? list[0]!.vtep;
      if (!vtep) continue;
      targets.push({
        nid,
        network: net.name,
        node,
        vtep,
        from: { endpoint: from.name, netns: from.netns! },
        to: list.slice(0, TARGETS_PER_NODE).map((e) => ({ endpoint: e.name, ip: e.ip })),
      });
    }
  }
  return { targets, skipped };
}

function run(cmd: string, args: readonly string[], signal: AbortSignal): Promise<number> {
  return new Promise((resolve) => {
    execFile(cmd, args, { signal, timeout: 10_000 }, (err) => resolve(err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0));
  });
}

function pingIn(netns: string | undefined, ip: string, signal: AbortSignal, opts: { count?: number; size?: number } = {}): Promise<boolean> {
  const ping = ['ping', '-n', '-q', '-c', String(opts.count ?? PINGS), '-i', String(PING_INTERVAL_S), '-W', String(PING_WAIT_S)];
  // Without Don't Fragment: the sandbox may have cached a smaller path MTU from an earlier drop (then it
  // fragments instead of refusing), and the VXLAN packet around it is sent whole, so a too small link on
  // the way (a switch port, a bridge) drops it. A too small link on this host is mtu.ts's finding.
  if (opts.size !== undefined) ping.push('-M', 'dont', '-s', String(opts.size));
  ping.push(ip);
  const [cmd, ...args] = netns ? ['nsenter', `--net=${netns}`, ...ping] : ping;
  return run(cmd!, args, signal).then((code) => code === 0);
}

/** What one target's probe found. */
export interface ProbeOutcome {
  readonly target: ProbeTarget;
  /** The endpoint that answered, if any. */
  readonly answered?: string;
  /** With `mtu`: whether a full-size ping got through (undefined when not tried). */
  readonly fullSize?: boolean;
  /** When nothing answered: whether the VTEP answers a ping on the underlay. */
  readonly underlay?: boolean;
}

/** Runs one target: small pings to each endpoint until one answers, then (with `mtu`) one full-size ping; else an underlay ping. */
export async function probeTarget(target: ProbeTarget, mtu: number | undefined, signal: AbortSignal): Promise<ProbeOutcome> {
  for (const to of target.to) {
    if (await pingIn(target.from.netns, to.ip, signal)) {
      const fullSize = mtu === undefined ? undefined : await pingIn(target.from.netns, to.ip, signal, { count: 1, size: mtu - IPV4_ICMP_HEADER_BYTES });
      return { target, answered: to.endpoint, ...(fullSize !== undefined ? { fullSize } : {}) };
    }
  }
  return { target, underlay: await pingIn(undefined, target.vtep, signal, { count: 1 }) };
}

/** Runs every target (a few at a time). `mtuOf` gives the overlay MTU of a network (for the full-size ping). */
export async function runProbes(targets: readonly ProbeTarget[], mtuOf: (nid: string) => number | undefined, signal: AbortSignal): Promise<ProbeOutcome[]> {
  const results: ProbeOutcome[] = new Array<ProbeOutcome>(targets.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < targets.length && !signal.aborted) {
      const i = next++;
      results[i] = await probeTarget(targets[i]!, mtuOf(targets[i]!.nid), signal);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PROBE_CONCURRENCY, targets.length) }, worker));
  return results.filter(Boolean);
}

/** Pure: findings from probe outcomes, and the per-node result `node ls` shows. */
export function probeFindings(outcomes: readonly ProbeOutcome[], skipped: readonly string[], at: string, port: number): { findings: DoctorFinding[]; nodes: Map<string, NodeProbe> } {
  const findings: DoctorFinding[] = [];
  const nodes = new Map<string, NodeProbe>();
  for (const o of outcomes) {
    const t = o.target;
    const what = `${t.from.endpoint} → ${t.to.map((x) => `${x.endpoint} (${x.ip})`).join(', ')} on network ${t.network}`;
    if (o.answered) {
      const prev = nodes.get(t.node);
      if (!prev || !prev.ok) nodes.set(t.node, { ok: true, at, detail: `${t.from.endpoint} → ${o.answered} on network ${t.network} answered` });
      findings.push({ area: 'vxlan', status: 'ok', node: t.node, network: t.network, summary: `node ${t.node} (VTEP ${t.vtep}) answers over VXLAN: ${t.from.endpoint} → ${o.answered} on network ${t.network}` });
      if (o.fullSize === false) {
        findings.push({
          area: 'mtu',
          status: 'fail',
          node: t.node,
          network: t.network,
          summary: `network ${t.network}: full-size packets to node ${t.node} are lost (small ones pass, ${t.from.endpoint} → ${o.answered}): the underlay path MTU is below the overlay MTU + 50`,
          fix: 'raise the MTU of every underlay link between the hosts, or give the network a smaller MTU',
        });
      }
      continue;
    }
    if (!nodes.get(t.node)?.ok) nodes.set(t.node, { ok: false, at, detail: `no answer: ${what}` });
    findings.push({
      area: 'vxlan',
      status: 'fail',
      node: t.node,
      network: t.network,
      summary: `node ${t.node} (VTEP ${t.vtep}) does not answer over VXLAN: ${what}; ${o.underlay ? `its VTEP answers on the underlay, so UDP ${port} to it (or back) is blocked, or its entries for this host are wrong` : 'its VTEP does not answer on the underlay either'}`,
      fix: o.underlay
        ? `allow UDP ${port} between the hosts' underlay addresses (firewalls, security groups); run kvnet doctor on ${t.node}`
        : `check that ${t.node} is up and routable at ${t.vtep}; if it is gone for good: kvnet node rm ${t.node}`,
    });
  }
  for (const net of skipped) {
    findings.push({ area: 'vxlan', status: 'skip', network: net, summary: `network ${net}: no local endpoint with a sandbox this agent can enter (Docker endpoints have none in their records), so the VXLAN path was not probed` });
  }
  return { findings, nodes };
}
