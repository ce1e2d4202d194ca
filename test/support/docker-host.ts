/**
 * The agent's Docker side on one host, wired the way packages/agent/src/agent.ts wires it: mirrors of
 * the store's networks, endpoints and nodes → a cluster view; `reconcileNow` = computeDesiredState + withDockerEndpoints → Dataplane.apply
 * (or nothing, for tests without a kernel); a NetworkService; the StoreDockerBackend; the DockerDriver;
 * and, with `socketPath`, the plugin server.
 *
 * ```ts
 * const host = await DockerTestHost.start({ store, node: 'h1', vtep: '198.18.0.1', dataplane, socketPath, engine });
 * … docker network create -d kvnet --ipam-driver kvnet …
 * await host.stop();
 * ```
 */

import { pino, type Logger } from 'pino';
import type { Dataplane, DataplaneError } from '@kvnet/dataplane';
import { Ipam } from '@kvnet/ipam';
import { PrefixMirror, sleep, type KVStore } from '@kvnet/store';
import { buildClusterView, type ClusterView } from '../../packages/agent/src/cluster-view.ts';
import { StoreDockerBackend } from '../../packages/agent/src/docker-backend.ts';
import { withDockerEndpoints } from '../../packages/agent/src/docker-desired-state.ts';
import { DockerDriver } from '../../packages/agent/src/docker-driver.ts';
import type { DockerEngine } from '../../packages/agent/src/docker-engine.ts';
import { DockerNetworkSync } from '../../packages/agent/src/docker-network-sync.ts';
import { DockerPluginServer } from '../../packages/agent/src/docker-plugin.ts';
import { computeDesiredState } from '../../packages/agent/src/desired-state.ts';
import { ENDPOINTS, encodeRecord, keys, NETWORKS, NODES, type NodeRecord } from '../../packages/agent/src/layout.ts';
import { NetworkService } from '../../packages/agent/src/network-service.ts';

export interface DockerTestHostOptions {
  readonly store: KVStore;
  readonly node: string;
  readonly vtep: string;
  /** Without one, reconcileNow only reports what {@link DockerTestHost.plumbErrors} returns. */
  readonly dataplane?: Dataplane;
  readonly socketPath?: string;
  readonly engine?: DockerEngine;
  readonly scope?: 'local' | 'global';
  readonly logger?: Logger;
  /** Grace before an endpoint dockerd does not list is removed (DockerNetworkSync). */
  readonly staleAfterMs?: number;
}

export class DockerTestHost {
  readonly ipam: Ipam;
  readonly service: NetworkService;
  readonly backend: StoreDockerBackend;
  readonly driver: DockerDriver;
  plugin: DockerPluginServer | undefined;
  /** Errors a dataplane-less host reports from reconcileNow (tests of the rollback path). */
  plumbErrors: (view: ClusterView) => DataplaneError[] = () => [];
  readonly applied: unknown[] = [];
  /** With an engine: mirrors kvnet networks into the local dockerd after every view change. */
  readonly sync: DockerNetworkSync | undefined;
  private readonly mirrors: PrefixMirror[];
  private chain: Promise<unknown> = Promise.resolve();
  private syncTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  private constructor(readonly opts: DockerTestHostOptions) {
    const logger = opts.logger ?? pino({ level: 'silent' });
    this.mirrors = [NETWORKS, ENDPOINTS, NODES].map((p) => new PrefixMirror(opts.store, p, { logger, onChange: () => this.onViewChange() }));
    this.ipam = new Ipam({ store: opts.store, logger });
    const common = {
      store: opts.store,
      ipam: this.ipam,
      logger,
      node: opts.node,
      nodeId: `id-${opts.node}`,
      vtep: opts.vtep,
      view: () => this.view(),
      waitForView: (key: string, present: boolean, timeoutMs: number) => this.waitForView(key, present, timeoutMs),
      reconcileNow: () => this.reconcileNow(),
    };
    this.service = new NetworkService({ ...common, egressIfname: undefined });
    this.backend = new StoreDockerBackend({ ...common, service: this.service });
    this.sync = opts.engine
      ? new DockerNetworkSync({
          engine: opts.engine,
          node: opts.node,
          logger,
          removeEndpoint: (n, e) => this.backend.deleteEndpoint(n, e),
          nameEndpoint: (nid, eid, name) => this.backend.nameEndpoint(nid, eid, name),
          mirrorNetworks: opts.scope !== 'global',
          ...(opts.staleAfterMs !== undefined ? { staleAfterMs: opts.staleAfterMs } : {}),
        })
      : undefined;
    this.driver = new DockerDriver({ backend: this.backend, logger, ...(opts.scope ? { scope: opts.scope } : {}), ...(opts.engine ? { engine: opts.engine } : {}) });
  }

  static async start(opts: DockerTestHostOptions): Promise<DockerTestHost> {
    const host = new DockerTestHost(opts);
    const record: NodeRecord = { name: opts.node, advertise: opts.vtep, advertiseAddr: opts.vtep, version: 'test', startedAt: new Date().toISOString(), nodeId: `id-${opts.node}` };
    await opts.store.put(keys.node(opts.node), encodeRecord(record));
    for (const m of host.mirrors) m.start();
    await Promise.all(host.mirrors.map((m) => m.synced));
    if (opts.socketPath) {
      host.plugin = new DockerPluginServer({ socketPath: opts.socketPath, handlers: host.driver, logger: opts.logger ?? pino({ level: 'silent' }) });
      await host.plugin.start();
    }
    return host;
  }

  private reconcileTimer: NodeJS.Timeout | undefined;

  /** Like the agent: any change of the view schedules a reconcile (peers of other hosts) and a sync. */
  private onViewChange(): void {
    if (this.stopped) return;
    if (this.opts.dataplane && !this.reconcileTimer) {
      this.reconcileTimer = setTimeout(() => {
        this.reconcileTimer = undefined;
        if (!this.stopped) void this.reconcileNow().catch(() => undefined);
      }, 20);
    }
    this.scheduleSync();
  }

  /** Like the agent after a reconcile: one sync pass soon, and again a little later until it has nothing to do. */
  private scheduleSync(delayMs = 20): void {
    if (!this.sync || this.stopped || this.syncTimer) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      if (this.stopped) return;
      this.sync!.run(() => this.view())
        .then((r) => {
          if (r.errors.length > 0 || r.pending > 0) this.scheduleSync(500);
        })
        .catch(() => this.scheduleSync(500));
    }, delayMs);
  }

  view(): ClusterView {
    const [n, e, o] = this.mirrors as [PrefixMirror, PrefixMirror, PrefixMirror];
    return buildClusterView({ networks: n.view.values(), endpoints: e.view.values(), nodes: o.view.values() });
  }

  async waitForView(key: string, present: boolean, timeoutMs: number): Promise<boolean> {
    const mirror = this.mirrors.find((m) => key.startsWith(`${m.prefix}/`));
    if (!mirror) return false;
    const deadline = Date.now() + timeoutMs;
    while (mirror.view.has(key) !== present) {
      if (Date.now() > deadline) return false;
      await sleep(10);
    }
    return true;
  }

  /** Serialised like the agent's loop: one apply at a time, each from the view at its start. */
  reconcileNow(): Promise<readonly DataplaneError[]> {
    const run = async (): Promise<readonly DataplaneError[]> => {
      const view = this.view();
      if (!this.opts.dataplane) return this.plumbErrors(view);
      const base = computeDesiredState({ view, node: this.opts.node, egress: new Map() });
      const state = withDockerEndpoints(base.state, view, this.opts.node);
      this.applied.push(state);
      return (await this.opts.dataplane.apply(state)).errors;
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.syncTimer);
    clearTimeout(this.reconcileTimer);
    await this.chain;
    await this.plugin?.stop();
    await this.driver.stop();
    await Promise.all(this.mirrors.map((m) => m.stop()));
    await this.opts.store.delete(keys.node(this.opts.node)).catch(() => undefined);
  }
}
