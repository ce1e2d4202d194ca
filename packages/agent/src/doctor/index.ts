/**
 * The doctor face: `kvnet doctor` (`GET /v1/doctor` on the local API). One run compares what the
 * store's view says this host should have with what its kernel has, and checks what the view cannot
 * show: the store itself, this node's registration, sandboxes, iptables, the MTU chain, the VXLAN path
 * to every other node (a probe over the overlay), and the Docker plugin and dockerd in Docker mode.
 *
 * | file | what |
 * |---|---|
 * | report.ts | the answer: findings (area, ok/warn/fail/skip, one line, what to do) |
 * | store-checks.ts | store state and latency, registration, TCP connects to the servers |
 * | kernel-diff.ts | pure: desired vs actual kernel state, every difference named |
 * | mtu.ts | the MTU chain on this host |
 * | vxlan-probe.ts | pings over the overlay from a local sandbox to each other node; path MTU |
 * | docker-checks.ts | plugin socket, dockerd, networks mirrored into dockerd |
 *
 * DNS checks come from the names face: it passes a {@link DoctorCheck} in {@link DoctorDeps.checks}.
 * Runs are serialised (a request during a run gets that run's report). Nothing is changed anywhere.
 */

import { probeNetns, type Dataplane, type SandboxProbe } from '@kvnet/dataplane';
import { computeDesiredState } from '../desired-state.ts';
import type { AgentContext, Face } from '../context.ts';
import type { NodeProbe } from '../nodes.ts';
import { dockerChecks } from './docker-checks.ts';
import { kernelDiff, type DiffNames } from './kernel-diff.ts';
import { findUnderlay, mtuFindings } from './mtu.ts';
import { buildReport, type DoctorCheck, type DoctorFinding, type DoctorReport } from './report.ts';
import { storeChecks } from './store-checks.ts';
import { chooseProbeTargets, probeFindings, runProbes } from './vxlan-probe.ts';

export type { CheckArea, CheckStatus, DoctorCheck, DoctorFinding, DoctorReport } from './report.ts';
export { describeServers, probeServers } from './store-checks.ts';

/** Upper bound of one doctor run. */
export const DOCTOR_RUN_TIMEOUT_MS = 60_000;

/** What doctor needs of the data plane: read the kernel, its prefix and default overlay MTU. */
export type DoctorDataplane = Pick<Dataplane, 'readState' | 'prefix' | 'overlayMtu'>;

export interface DoctorDeps {
  /** The agent's data plane when it can read the kernel (a test's recording stand-in cannot: kernel checks are skipped). */
  readonly dataplane?: DoctorDataplane;
  /** This host's egress addresses (eid → address), as the reconcile loop assigned them. */
  readonly egress: () => ReadonlyMap<string, string>;
  /** More checks (the names face's DNS checks). */
  readonly checks?: readonly DoctorCheck[];
}

/** The started doctor face. */
export interface DoctorFace extends Face {
  /** Runs every check (or joins the run in progress). */
  run(): Promise<DoctorReport>;
  /** The last VXLAN probe per node, for `kvnet node ls`. */
  probes(): ReadonlyMap<string, NodeProbe>;
}

/** Whether a data plane port can also read the kernel. */
export function readableDataplane(dp: unknown): DoctorDataplane | undefined {
  return dp !== null && typeof dp === 'object' && typeof (dp as { readState?: unknown }).readState === 'function' ? (dp as DoctorDataplane) : undefined;
}

/** Starts the doctor face (it listens on nothing: the local API serves it). */
export function startDoctor(ctx: AgentContext, deps: DoctorDeps): DoctorFace {
  const logger = ctx.logger.child({ component: 'doctor' });
  const stop = new AbortController();
  let running: Promise<DoctorReport> | undefined;
  let lastProbes = new Map<string, NodeProbe>();

  const once = async (): Promise<DoctorReport> => {
    const started = Date.now();
    const signal = AbortSignal.any([stop.signal, AbortSignal.timeout(DOCTOR_RUN_TIMEOUT_MS)]);
    const view = ctx.cluster.view();
    const self = ctx.node.name;
    const findings: DoctorFinding[] = [];
    const names: DiffNames = {
      network: (nid) => view.networks.get(nid)?.name ?? nid.slice(0, 12),
      endpoint: (nid, eid) => view.endpoints.get(nid)?.get(eid)?.name ?? eid.slice(0, 12),
      peer: (nid, ip) => {
        const e = [...(view.endpoints.get(nid)?.values() ?? [])].find((x) => x.ip === ip);
        return e ? `${e.name} on ${e.node}` : ip;
      },
    };

    findings.push(...(await storeChecks(ctx, () => ctx.cluster.health.report())));

    const desired = computeDesiredState({ view, node: self, egress: deps.egress() }).state;
    const dp = deps.dataplane;
    let mtuOf: (nid: string) => number | undefined = () => undefined;
    if (!dp) {
      findings.push({ area: 'kernel', status: 'skip', summary: 'this agent runs without a kernel data plane it can read; kernel state not compared' });
    } else {
      try {
        const actual = await dp.readState({ iptables: true, signal });
        const sandboxes = new Map<string, SandboxProbe>();
        for (const n of desired.networks) for (const e of n.endpoints) if (e.sandbox) sandboxes.set(e.sandbox.path, probeNetns(e.sandbox.path));
        const gatewayBridge = ctx.config.gatewayBridge === 'none' ? undefined : ctx.config.gatewayBridge;
        const diff = kernelDiff({ desired, actual, prefix: dp.prefix, vtep: ctx.node.vtep, vxlanPort: ctx.datapath.vxlanPort, gatewayBridge, sandboxes, names });
        findings.push(...diff);
        if (!diff.some((f) => f.area === 'kernel')) {
          const peers = desired.networks.reduce((s, n) => s + n.peers.length, 0);
          const eps = desired.networks.reduce((s, n) => s + n.endpoints.length, 0);
          findings.push({ area: 'kernel', status: 'ok', summary: `kernel matches the store's view: ${desired.networks.length} overlay network(s), ${eps} local endpoint(s), ${peers} peer(s) (FDB and neighbour entries)` });
        }
        const underlay = await findUnderlay(ctx.node.vtep, signal);
        findings.push(...mtuFindings({ underlay, vtep: ctx.node.vtep, desired, actual, prefix: dp.prefix, defaultMtu: dp.overlayMtu, names }));
        const mtus = new Map(desired.networks.map((n) => [n.id, n.mtu ?? dp.overlayMtu]));
        mtuOf = (nid) => mtus.get(nid);
      } catch (err) {
        if (signal.aborted) throw err;
        findings.push({ area: 'kernel', status: 'fail', summary: `cannot read this host's kernel state: ${(err as Error).message}`, fix: 'the agent needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2' });
      }
    }

    const { targets, skipped } = chooseProbeTargets(view, self, (netns) => probeNetns(netns) === 'netns');
    const outcomes = await runProbes(targets, mtuOf, signal);
    const at = new Date().toISOString();
    const probed = probeFindings(outcomes, skipped, at, ctx.datapath.vxlanPort);
    findings.push(...probed.findings);
    if (targets.length === 0 && skipped.length === 0) {
      findings.push({ area: 'vxlan', status: 'skip', summary: 'no network has endpoints both on this host and on another one: nothing to probe over VXLAN' });
    }
    lastProbes = probed.nodes;

    findings.push(...(await dockerChecks(ctx.config, view, signal)));
    for (const check of deps.checks ?? []) {
      try {
        findings.push(...(await check(signal)));
      } catch (err) {
        findings.push({ area: 'dns', status: 'fail', summary: `a check failed to run: ${(err as Error).message}` });
      }
    }
    const report = buildReport(self, started, findings);
    logger.info({ problems: report.problems, warnings: report.warnings, ms: report.durationMs }, 'doctor ran');
    return report;
  };

  return {
    run(): Promise<DoctorReport> {
      running ??= once().finally(() => (running = undefined));
      return running;
    },
    probes: () => lastProbes,
    async stop(): Promise<void> {
      stop.abort();
      await running?.catch(() => undefined);
    },
  };
}
