/**
 * The reconcile loop: keeps this host's kernel equal to what the cluster view describes.
 *
 * Any change (or re-list) schedules one debounced run; runs never overlap, and everything that arrives
 * during a run is folded into the next one, so a burst of events costs a few runs, not one each. A run
 * takes one of two paths:
 *
 * - **peers only** (the common case at scale: remote endpoints coming and going): when what changed
 *   since the last applied state moves only peers of networks this host programs ({@link desiredDelta},
 *   which reads just the changed records), those peers' neighbour and FDB lines are applied through the
 *   data plane's incremental path (`applyPeers`: no kernel read, no process started). A change in a
 *   network this host has no endpoint on costs nothing beyond that look.
 * - **full**: anything else (a local endpoint, a network record this host uses, a re-list, the first
 *   run), or when the incremental path declines or fails, and every {@link PERIODIC_APPLY_MS} in any
 *   case: the full desired state from the current view — host-local egress addresses on the gateway
 *   bridge, then {@link computeDesiredState} — handed to the data plane, which reads the kernel and
 *   changes whatever differs. Within the period it reads everything but the peers' neighbour and FDB
 *   tables (`trustPeers`: taken as the last apply left them); the periodic run repairs drift made
 *   behind the agent's back, and reads those tables back too every {@link peersRepairPeriodMs} — the
 *   period itself up to 600 peers, longer with more (reading and comparing them is O(peers): at 2 000
 *   peers reading them every 30 s was ≈ 0.4 ms/s of an idle agent's ≈ 7, measured with `npm run bench
 *   -- events --idle`; at 50 000 peers it would be ≈ 25 times that on every host). An unchanged full
 *   state is not re-applied before the period is over.
 *
 * Reconciliation never depends on having seen every event: the full path recomputes everything from
 * the view. A run whose data plane reported errors (a sandbox that vanished, a kernel refusal) is
 * retried with backoff while the rest of the state stays applied.
 */

import type { Logger } from 'pino';
import type { Dataplane, DataplaneError, GatewayBridgeInfo } from '@kvnet/dataplane';
import { endpointsOfNode, type ClusterView, type ViewChange } from './cluster-view.ts';
import { computeDesiredState, desiredDelta } from './desired-state.ts';
import { assignEgress, assignEgress6 } from './egress.ts';
import type { LocalState } from './local-state.ts';
import type { AgentMetrics } from './metrics.ts';
import type { MtuWarningLog } from './network-mtu.ts';

/** Changes arriving within this window are folded into one reconcile. */
export const RECONCILE_DEBOUNCE_MS = 5;
/** Retry of a reconcile that left data plane errors (sandbox missing, kernel refusal), doubling. */
export const RECONCILE_RETRY_BASE_MS = 1_000;
export const RECONCILE_RETRY_CAP_MS = 30_000;
/** The full desired state is applied (the kernel read and repaired) at least this often (drift repair). */
export const PERIODIC_APPLY_MS = 30_000;
/** Per peer programmed, the drift repair of the peers' tables waits this much longer than {@link PERIODIC_APPLY_MS} (see {@link peersRepairPeriodMs}). */
export const PEERS_REPAIR_MS_PER_PEER = 50;
/** The peers' tables are read back at least once per this many periods, however many peers. */
export const PEERS_REPAIR_MAX_PERIODS = 10;

/**
 * How often the drift repair also reads the peers' neighbour and FDB tables back, for `peers` peers
 * and a repair period of `periodMs`: the period up to `periodMs / 50 ms` peers (600 at 30 s), then
 * 50 ms per peer (100 s at 2 000 peers), at most {@link PEERS_REPAIR_MAX_PERIODS} periods (5 min); the
 * reconciler rounds it up to whole periods (every 4th repair at 2 000 peers). Its average cost stays
 * near that of 600 peers every 30 s instead of growing with the cluster.
 */
export function peersRepairPeriodMs(peers: number, periodMs: number): number {
  return Math.min(Math.max(periodMs, peers * PEERS_REPAIR_MS_PER_PEER), PEERS_REPAIR_MAX_PERIODS * periodMs);
}

/**
 * What the loop needs of the data plane (the real `Dataplane`, or a stand-in in unit tests);
 * `readUnderlay` is asked once at start for the underlay's MTU when the agent was given its data plane.
 * Without `applyPeers` every run takes the full path.
 */
export type DataplanePort = Pick<Dataplane, 'apply' | 'ensureGatewayBridge'> & Partial<Pick<Dataplane, 'readUnderlay' | 'applyPeers'>>;

/** What a reconcile did, for the faces' follow-up work. */
export interface ReconcileInfo {
  /**
   * True when only peers (remote endpoints of networks this host programs) can have changed since the
   * previous reconcile: no network record, no local endpoint, no node was re-listed. A face that works
   * on networks or local endpoints only may skip such a run.
   */
  readonly peersOnly: boolean;
}

export interface ReconcilerOptions {
  readonly node: string;
  /** Gateway bridge name, or `none`. */
  readonly gatewayBridge: string;
  readonly dataplane: DataplanePort;
  readonly state: LocalState;
  readonly view: () => ClusterView;
  /** False until the view is complete (every mirror listed once): nothing is applied before. */
  readonly ready: () => boolean;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** Runs after every reconcile with the view it used (dead-node checks, faces' follow-up work). */
  readonly afterReconcile: (view: ClusterView, info: ReconcileInfo) => void;
  /** Reports networks this host's underlay cannot carry, once each (with the data plane's apply warnings). */
  readonly mtuWarnings?: MtuWarningLog;
  /** The drift repair's period; default {@link PERIODIC_APPLY_MS} (tests shorten it). */
  readonly periodicApplyMs?: number;
}

/** The last state applied without errors: what the next run builds on. */
interface Applied {
  /** The full desired state (JSON) when it was applied by the full path; undefined once peers moved since. */
  state: string | undefined;
  /** When the full path last applied it (the drift repair is due {@link PERIODIC_APPLY_MS} later). */
  at: number;
  /** The view the kernel now matches. */
  view: ClusterView;
  /** Networks in that state. */
  programmed: ReadonlySet<string>;
  /** Peers in that state. */
  peers: number;
}

export class Reconciler {
  private requested = 0;
  private started = 0;
  private running = false;
  private stopping = false;
  private debounceTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private periodicTimer: NodeJS.Timeout | undefined;
  private retryDelay = RECONCILE_RETRY_BASE_MS;
  private waiters: Array<{ gen: number; resolve: (errors: readonly DataplaneError[]) => void }> = [];
  private loopDone: Promise<void> = Promise.resolve();
  private gateway: GatewayBridgeInfo | undefined;
  private lastApplied: Applied | undefined;
  /**
   * Repair runs since one read the peers' tables back (counted in runs, not milliseconds: the timer's
   * run comes a few ms short of a period after the last, like {@link repairRequested}).
   */
  private repairsSincePeersRead = 0;
  /** View changes since the last run, and whether a re-list came among them. */
  private changes: ViewChange[] = [];
  private resynced = false;
  /**
   * Set by the periodic timer: the next run repairs. Without it the timer's run found the period not
   * quite over (it started a few ms after the last repair) and did nothing, so the repair fell to the
   * next remote event instead — a full apply, kernel read included, charged to (and delaying) an event.
   */
  private repairRequested = false;

  constructor(private readonly opts: ReconcilerOptions) {}

  /** Starts the periodic drift repair. */
  start(): void {
    this.periodicTimer = setInterval(() => {
      this.repairRequested = true;
      this.schedule();
    }, this.periodMs);
  }

  /** Records what a batch of store events changed in the view (call before {@link schedule}). */
  noteChange(change: ViewChange, resync: boolean): void {
    if (resync) this.resynced = true;
    else this.changes.push(change);
  }

  /** Asks for a reconcile soon (debounced). */
  schedule(delayMs = RECONCILE_DEBOUNCE_MS): void {
    if (this.stopping) return;
    this.requested++;
    if (this.running || this.debounceTimer) return;
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      this.kick();
    }, delayMs);
  }

  /** A reconcile that starts after this call; resolves with its data plane errors. */
  reconcileNow(): Promise<readonly DataplaneError[]> {
    if (this.stopping) return Promise.resolve([]);
    const gen = ++this.requested;
    const p = new Promise<readonly DataplaneError[]>((resolve) => this.waiters.push({ gen, resolve }));
    this.kick();
    return p;
  }

  /** Another reconcile after a backoff (used by faces whose follow-up work failed). */
  scheduleRetry(): void {
    if (this.retryTimer || this.stopping) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, RECONCILE_RETRY_CAP_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.schedule();
    }, delay);
  }

  /**
   * The gateway bridge interface a local endpoint got in its sandbox (`ip/len`) and the bridge's
   * gateway, as the last reconcile assigned them; undefined for an endpoint without egress (internal
   * network, `--gateway-bridge none`, not reconciled yet).
   */
  egressOf(eid: string): { readonly address: string; readonly gateway: string } | undefined {
    const address = this.opts.state.egress.get(eid);
    return address !== undefined && this.gateway ? { address, gateway: this.gateway.gateway } : undefined;
  }

  /** Stops scheduling: later requests do nothing and {@link reconcileNow} resolves at once. */
  halt(): void {
    this.stopping = true;
    clearTimeout(this.debounceTimer);
    clearTimeout(this.retryTimer);
    clearInterval(this.periodicTimer);
  }

  /** Halts, lets a running apply finish (a half-applied batch is repaired next start) and releases waiters. */
  async stop(): Promise<void> {
    this.halt();
    await this.loopDone;
    for (const w of this.waiters.splice(0)) w.resolve([]);
  }

  private kick(): void {
    if (this.running) return;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    this.running = true;
    this.loopDone = (async () => {
      try {
        while (this.started < this.requested && !this.stopping) {
          const gen = this.requested;
          this.started = gen;
          let errors: readonly DataplaneError[] = [];
          try {
            errors = await this.reconcileOnce();
          } catch (err) {
            this.opts.logger.error({ err }, 'reconcile failed; retrying');
            this.scheduleRetry();
          }
          const done = this.waiters.filter((w) => w.gen <= gen);
          this.waiters = this.waiters.filter((w) => w.gen > gen);
          for (const w of done) w.resolve(errors);
        }
      } finally {
        this.running = false;
      }
    })();
  }

  /**
   * Host-local egress addresses on the gateway bridge for local endpoints of non-internal networks
   * (IPv4, and IPv6 where the bridge has an IPv6 subnet and the sandbox an IPv6 address).
   */
  private async egress(view: ClusterView): Promise<{ egress: Map<string, string>; egress6: Map<string, string> }> {
    const { node, state, dataplane, logger } = this.opts;
    const local = endpointsOfNode(view, node);
    const wantsEgress = local.some((e) => e.netns && view.networks.get(e.network) && !view.networks.get(e.network)!.internal);
    let egress = new Map<string, string>();
    let egress6 = new Map<string, string>();
    if (this.opts.gatewayBridge !== 'none' && wantsEgress) {
      if (!this.gateway) {
        try {
          this.gateway = await dataplane.ensureGatewayBridge();
        } catch (err) {
          logger.error({ err }, 'cannot set up the gateway bridge; endpoints get no egress for now');
          this.scheduleRetry();
        }
      }
      if (this.gateway) {
        const assigned = assignEgress(local, view.networks, this.gateway, state.egress);
        egress = assigned.egress;
        if (assigned.unassigned.length > 0) {
          logger.error({ eids: assigned.unassigned, subnet: this.gateway.subnet }, 'gateway bridge subnet is full; some endpoints get no egress');
        }
        egress6 = assignEgress6(egress, local, view.networks, this.gateway);
      }
    }
    state.setEgress(egress);
    return { egress, egress6 };
  }

  /** Whether this run must be the full path with every kernel table read back (the drift repair). */
  private repairDue(): boolean {
    return !this.lastApplied || this.repairRequested || Date.now() - this.lastApplied.at >= this.periodMs;
  }

  private get periodMs(): number {
    return this.opts.periodicApplyMs ?? PERIODIC_APPLY_MS;
  }

  /**
   * The peers-only path (see the module comment): true when it did the whole job — nothing this host
   * programs changed, or the data plane applied the peers' lines without errors.
   */
  private async reconcilePeers(view: ClusterView, changes: readonly ViewChange[]): Promise<boolean> {
    const { dataplane, logger, metrics } = this.opts;
    const applied = this.lastApplied;
    if (!applied || !dataplane.applyPeers || this.repairDue()) return false;
    const delta = desiredDelta({ before: applied.view, after: view, changes, node: this.opts.node, programmed: applied.programmed });
    if (delta.kind === 'full') {
      logger.debug({ reason: delta.reason }, 'full reconcile');
      return false;
    }
    if (delta.deltas.length > 0) {
      const stopTimer = metrics.reconcileDuration.startTimer();
      let report;
      try {
        report = await dataplane.applyPeers(delta.deltas);
      } catch (err) {
        logger.warn({ err }, 'applying peers failed; applying the full state');
        return false;
      }
      if (!report.incremental || report.errors.length > 0) {
        logger.debug({ reason: report.reason, errors: report.errors.length }, 'peers not applied on their own; applying the full state');
        return false;
      }
      stopTimer();
      applied.state = undefined;
      applied.peers += delta.peerCount;
      metrics.peersProgrammed.set(applied.peers);
      // debug, not info: at scale this is one line per remote event on every host
      if (report.changes > 0) logger.debug({ changes: report.changes, peers: applied.peers, ms: Math.round(report.durationMs) }, 'data plane updated (peers)');
    }
    applied.view = view;
    return true;
  }

  private async reconcileOnce(): Promise<readonly DataplaneError[]> {
    const { metrics, logger } = this.opts;
    if (!this.opts.ready()) return [];
    const view = this.opts.view();
    const changes = this.changes.splice(0);
    const resynced = this.resynced;
    this.resynced = false;
    if (!resynced && (await this.reconcilePeers(view, changes))) {
      this.retryDelay = RECONCILE_RETRY_BASE_MS;
      metrics.liveNodes.set(view.nodes.size);
      this.opts.afterReconcile(view, { peersOnly: true });
      return [];
    }
    const stopTimer = metrics.reconcileDuration.startTimer();
    const desired = computeDesiredState({ view, node: this.opts.node, ...(await this.egress(view)) });
    let errors: readonly DataplaneError[] = [];
    const stateJson = JSON.stringify(desired.state);
    // Within the period the kernel's peer tables are taken as the last apply left them (reading them
    // back grows with the cluster; a local change does not need it); the periodic run reads everything.
    const repairDue = this.repairDue();
    if (repairDue) this.repairRequested = false;
    // the peers' tables too (O(peers)): on the first run, and on every repair run that completes peersRepairPeriodMs
    const repairsPerPeersRead = Math.ceil(peersRepairPeriodMs(desired.peers, this.periodMs) / this.periodMs);
    const readPeers = !this.lastApplied || (repairDue && this.repairsSincePeersRead + 1 >= repairsPerPeersRead);
    const unchanged = !repairDue && this.lastApplied!.state === stateJson;
    try {
      const report = unchanged ? { errors: [], warnings: [], changes: 0, durationMs: 0 } : await this.opts.dataplane.apply(desired.state, readPeers ? {} : { trustPeers: true });
      errors = report.errors;
      if (readPeers && errors.length === 0) this.repairsSincePeersRead = 0;
      else if (repairDue) this.repairsSincePeersRead++;
      this.opts.mtuWarnings?.update(view, report.warnings);
      this.lastApplied =
        errors.length === 0
          ? { state: stateJson, at: repairDue ? Date.now() : this.lastApplied!.at, view, programmed: new Set(desired.state.networks.map((n) => n.id)), peers: desired.peers }
          : undefined;
      metrics.peersProgrammed.set(desired.peers);
      metrics.localEndpoints.set(desired.state.networks.reduce((s, n) => s + n.endpoints.length, 0));
      if (report.changes > 0) {
        logger.info({ changes: report.changes, networks: desired.state.networks.length, peers: desired.peers, ms: Math.round(report.durationMs) }, 'data plane updated');
      }
    } catch (err) {
      this.lastApplied = undefined;
      logger.error({ err }, 'data plane apply failed');
      this.scheduleRetry();
    }
    if (!unchanged) stopTimer();
    if (errors.length > 0) {
      metrics.reconcileErrors.inc(errors.length);
      this.scheduleRetry();
    } else {
      this.retryDelay = RECONCILE_RETRY_BASE_MS;
    }
    metrics.liveNodes.set(view.nodes.size);
    this.opts.afterReconcile(view, { peersOnly: false });
    return errors;
  }
}
