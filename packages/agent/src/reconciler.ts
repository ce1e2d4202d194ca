/**
 * The reconcile loop: keeps this host's kernel equal to what the cluster view describes.
 *
 * Reconciliation never depends on having seen every event: any change (or re-list) schedules one
 * debounced run that computes the **full** desired state from the current view — host-local egress
 * addresses on the gateway bridge, then {@link computeDesiredState} — and hands it to the data plane.
 * Runs never overlap; requests arriving during a run are folded into the next one. A run whose data
 * plane reported errors (a sandbox that vanished, a kernel refusal) is retried with backoff while the
 * rest of the state stays applied. An unchanged desired state is not re-applied (that costs kernel
 * reads) except every {@link PERIODIC_APPLY_MS}, which repairs drift made behind the agent's back.
 */

import type { Logger } from 'pino';
import type { Dataplane, DataplaneError, GatewayBridgeInfo } from '@kvnet/dataplane';
import { allEndpoints, type ClusterView } from './cluster-view.ts';
import { computeDesiredState } from './desired-state.ts';
import { assignEgress, assignEgress6 } from './egress.ts';
import type { LocalState } from './local-state.ts';
import type { AgentMetrics } from './metrics.ts';
import type { MtuWarningLog } from './network-mtu.ts';

/** Changes arriving within this window are folded into one reconcile. */
export const RECONCILE_DEBOUNCE_MS = 5;
/** Retry of a reconcile that left data plane errors (sandbox missing, kernel refusal), doubling. */
export const RECONCILE_RETRY_BASE_MS = 1_000;
export const RECONCILE_RETRY_CAP_MS = 30_000;
/** An unchanged desired state is re-applied after this long anyway (drift repair). */
export const PERIODIC_APPLY_MS = 30_000;

/**
 * What the loop needs of the data plane (the real `Dataplane`, or a stand-in in unit tests);
 * `readUnderlay` is asked once at start for the underlay's MTU when the agent was given its data plane.
 */
export type DataplanePort = Pick<Dataplane, 'apply' | 'ensureGatewayBridge'> & Partial<Pick<Dataplane, 'readUnderlay'>>;

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
  readonly afterReconcile: (view: ClusterView) => void;
  /** Reports networks this host's underlay cannot carry, once each (with the data plane's apply warnings). */
  readonly mtuWarnings?: MtuWarningLog;
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
  /** The last desired state applied without errors (JSON), and when. */
  private lastApplied: { state: string; at: number } | undefined;

  constructor(private readonly opts: ReconcilerOptions) {}

  /** Starts the periodic drift repair. */
  start(): void {
    this.periodicTimer = setInterval(() => this.schedule(), PERIODIC_APPLY_MS);
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
    const local = allEndpoints(view).filter((e) => e.node === node);
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

  private async reconcileOnce(): Promise<readonly DataplaneError[]> {
    const { metrics, logger } = this.opts;
    if (!this.opts.ready()) return [];
    const stopTimer = metrics.reconcileDuration.startTimer();
    const view = this.opts.view();
    const desired = computeDesiredState({ view, node: this.opts.node, ...(await this.egress(view)) });
    let errors: readonly DataplaneError[] = [];
    const stateJson = JSON.stringify(desired.state);
    const unchanged = this.lastApplied?.state === stateJson && Date.now() - this.lastApplied.at < PERIODIC_APPLY_MS;
    try {
      const report = unchanged ? { errors: [], warnings: [], changes: 0, durationMs: 0 } : await this.opts.dataplane.apply(desired.state);
      errors = report.errors;
      this.opts.mtuWarnings?.update(view, report.warnings);
      this.lastApplied = errors.length === 0 ? { state: stateJson, at: unchanged ? this.lastApplied!.at : Date.now() } : undefined;
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
    this.opts.afterReconcile(view);
    return errors;
  }
}
