/**
 * The CNI face: the agent's side of the `kvnet` CNI plugin (packages/cni) beyond the API calls it
 * serves (`/v1/cni/…`, answered by {@link CniAttachments}). Two background jobs:
 *
 * - **Vanished sandboxes.** A runtime normally removes an attachment with CNI DEL, but a DEL can fail
 *   (the agent was down — podman's cleanup does not retry — or the runtime crashed). An attachment
 *   whose network namespace is gone on two sweeps in a row ({@link CNI_SWEEP_INTERVAL_MS} apart) is
 *   removed as a DEL would, so its address and name do not stay blocked. Only CNI endpoints: an
 *   endpoint made by `kvnet network connect` belongs to whoever made it.
 * - **Host routes** (host-routes.ts): the overlay address of each local CNI endpoint is routed through
 *   its gateway bridge interface so that `portmap` can publish ports. An ADD writes its route itself;
 *   the face synchronises all of them {@link ROUTE_SYNC_DELAY_MS} after a reconcile whose routes differ
 *   from the last ones applied, and on every sweep (removals, repairs).
 */

import type { Logger } from 'pino';
import { endpointsOfNode, type ClusterView } from '../cluster-view.ts';
import type { AgentContext, Face } from '../context.ts';
import { NotFoundError } from '../errors.ts';
import { CniAttachments } from './attachments.ts';
import { applyHostRoutes, desiredHostRoutes, planHostRoutes, readHostRoutes, type HostRoute } from './host-routes.ts';
import { isNetns } from './sandbox.ts';

export { CniAttachments, type CniAttachmentView, type CniGcResult, type CniNetworkInfo } from './attachments.ts';
export { HOST_ROUTE_PROTO } from './host-routes.ts';
export type { SandboxInterface, SandboxRoute, SandboxState } from './sandbox.ts';

/** How often the face looks for vanished sandboxes and re-checks host routes. */
export const CNI_SWEEP_INTERVAL_MS = 10_000;
/**
 * A reconcile that changed the wanted host routes synchronises them this much later: an ADD writes its
 * own route at once, and the face's kernel read would only compete with it for the CPU.
 */
export const ROUTE_SYNC_DELAY_MS = 1_000;

/** Starts the CNI face's background work. */
export async function startCni(ctx: AgentContext): Promise<Face> {
  const face = new CniFace(ctx);
  face.start();
  return face;
}

class CniFace implements Face {
  private readonly logger: Logger;
  private readonly attachments: CniAttachments;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Endpoint ids whose sandbox was missing on the last sweep. */
  private missing = new Set<string>();
  /** Host routes: the last desired set synchronised (JSON), the kernel's suspects, the running sync. */
  private lastRoutes: string | undefined;
  private routeSuspects: ReadonlySet<string> = new Set();
  private routeSync: Promise<void> | undefined;
  private routeSyncAgain = false;
  private sweeping: Promise<void> | undefined;
  private delayedSync: NodeJS.Timeout | undefined;

  constructor(private readonly ctx: AgentContext) {
    this.logger = ctx.logger.child({ component: 'cni' });
    this.attachments = new CniAttachments(ctx);
  }

  start(): void {
    this.timer = setInterval(() => {
      this.sweeping ??= this.sweep().finally(() => (this.sweeping = undefined));
    }, CNI_SWEEP_INTERVAL_MS);
    this.syncRoutes();
  }

  afterReconcile(view: ClusterView): void {
    if (!this.routesOn() || this.delayedSync || JSON.stringify(this.wantedRoutes(view)) === this.lastRoutes) return;
    this.delayedSync = setTimeout(() => {
      this.delayedSync = undefined;
      this.syncRoutes();
    }, ROUTE_SYNC_DELAY_MS);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.delayedSync);
    await Promise.all([this.sweeping, this.routeSync].map((p) => p?.catch(() => undefined)));
  }

  private routesOn(): boolean {
    return this.ctx.config.gatewayBridge !== 'none';
  }

  private wantedRoutes(view: ClusterView): HostRoute[] {
    return desiredHostRoutes(view, this.ctx.node.name, (eid) => this.ctx.reconciler.egressOf(eid));
  }

  /** One sweep: vanished sandboxes, then the host routes. */
  private async sweep(): Promise<void> {
    const view = this.ctx.cluster.view();
    const gone = new Set<string>();
    for (const e of endpointsOfNode(view, this.ctx.node.name)) {
      if (!e.cni || !e.netns || isNetns(e.netns)) continue;
      gone.add(e.id);
      if (!this.missing.has(e.id) || this.stopped) continue;
      try {
        await this.attachments.detach({ network: e.network, containerId: e.cni.containerId, ifname: e.cni.ifname });
        this.ctx.metrics.orphansRemoved.inc({ kind: 'cni-sandbox' });
        this.logger.info({ eid: e.id, endpoint: e.name, netns: e.netns, containerId: e.cni.containerId }, 'CNI endpoint removed: its network namespace is gone and no DEL came');
      } catch (err) {
        if (!(err instanceof NotFoundError)) this.logger.warn({ err, eid: e.id }, 'could not remove a CNI endpoint whose network namespace is gone; retrying');
      }
    }
    this.missing = gone;
    // The last sync found none of our routes and none are wanted: only this face adds them, so there
    // is nothing to read again (a host without CNI endpoints does not start a process every sweep).
    const nothingToDo = this.lastRoutes === '[]' && this.wantedRoutes(view).length === 0;
    this.syncRoutes(!nothingToDo);
  }

  /** Synchronises host routes with the view (serialised; a request during a run runs once more after it). */
  private syncRoutes(force = false): void {
    if (!this.routesOn() || this.stopped) return;
    if (this.routeSync) {
      this.routeSyncAgain = true;
      return;
    }
    const bridge = this.ctx.config.gatewayBridge;
    this.routeSync = (async () => {
      do {
        this.routeSyncAgain = false;
        const desired = this.wantedRoutes(this.ctx.cluster.view());
        const json = JSON.stringify(desired);
        if (!force && json === this.lastRoutes) continue;
        force = false;
        try {
          const plan = planHostRoutes(desired, await readHostRoutes(bridge), this.routeSuspects);
          const failed = await applyHostRoutes(bridge, plan.add, plan.remove);
          this.routeSuspects = plan.suspects;
          if (failed.length > 0) this.logger.warn({ failed }, 'some CNI host routes could not be changed; retrying at the next sweep');
          else if (plan.add.length + plan.remove.length > 0) this.logger.info({ added: plan.add.length, removed: plan.remove.length }, 'CNI host routes updated');
          // While suspects remain, the next sync must read the kernel again even if nothing else changed.
          this.lastRoutes = failed.length > 0 || plan.suspects.size > 0 ? undefined : json;
        } catch (err) {
          this.lastRoutes = undefined;
          this.logger.warn({ err }, 'cannot synchronise CNI host routes; retrying at the next sweep');
        }
      } while (this.routeSyncAgain && !this.stopped);
    })().finally(() => (this.routeSync = undefined));
  }
}
