/**
 * The composition root: what `kvnet agent` runs. It wires the store, IPAM, data plane, membership,
 * the cluster mirror, the reconcile loop, the reaper and the janitor, then starts the faces (the
 * local API, Docker, metrics), each through its one entry.
 *
 * Start order: register (node record on a lease) → list every prefix → restore endpoints reaped while
 * this node was away → first reconcile → faces → "agent ready". {@link Agent.stop} leaves the data
 * plane and the node's records alone (the lease is released, not revoked, and a restart marker is
 * written) so a restart does not disturb traffic. Tests start the same root in-process, passing their
 * own data plane or Engine API client through {@link AgentDeps}.
 */

import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { Dataplane } from '@kvnet/dataplane';
import { Ipam } from '@kvnet/ipam';
import { openStore, parseStoreOpts, sleep, type KVStore } from '@kvnet/store';
import { startApi } from './api/index.ts';
import { startCni } from './cni/index.ts';
import { ClusterMirror } from './cluster-mirror.ts';
import { countingStore } from './counting-store.ts';
import type { ClusterView } from './cluster-view.ts';
import { resolveAdvertise, validateConfig, type Advertise, type AgentConfig } from './config.ts';
import type { AgentContext, Face, StatusSource } from './context.ts';
import { startDocker, type DockerFace } from './docker/index.ts';
import type { DockerEngine } from './docker/engine.ts';
import { Janitor, startJanitorLoop } from './janitor.ts';
import type { NodeRecord } from './layout.ts';
import { LocalState } from './local-state.ts';
import { Membership } from './membership.ts';
import { AgentMetrics, startMetricsServer } from './metrics.ts';
import { NetworkService } from './network-service.ts';
import { Reaper, REAP_GRACE_MS } from './reaper.ts';
import { Reconciler, type DataplanePort, type ReconcileInfo } from './reconciler.ts';
import { Records } from './records.ts';

/** How long to wait for the first listing of every prefix at start before giving up. */
export const FIRST_SYNC_TIMEOUT_MS = 30_000;
/** Budget of a clean stop (the contract says 5 s). */
export const STOP_BUDGET_MS = 4_000;

export const AGENT_VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
})();

export interface AgentOptions extends AgentConfig {
  readonly logger: Logger;
}

/** Parts a caller may supply instead of the defaults (tests; an embedding runtime). */
export interface AgentDeps {
  /** Default: a `Dataplane` for this host's kernel, from the config. */
  readonly dataplane?: DataplanePort;
  /** Default: an Engine API client on `--docker-socket`. */
  readonly dockerEngine?: DockerEngine;
}

export class Agent implements StatusSource {
  private readonly logger: Logger;
  readonly metrics = new AgentMetrics();
  private readonly startedAt = new Date().toISOString();
  private store: KVStore | undefined;
  private membership: Membership | undefined;
  private cluster: ClusterMirror | undefined;
  private reconciler: Reconciler | undefined;
  private reaper: Reaper | undefined;
  private dataplane: (DataplanePort & { close?: () => void }) | undefined;
  private advertise: Advertise | undefined;
  private nodeId: string | undefined;
  private ctx: AgentContext | undefined;
  private faces: Face[] = [];
  private dockerFace: DockerFace | undefined;
  private metricsServer: Server | undefined;
  private stopJanitor: (() => void) | undefined;
  private ready = false;
  private stopping = false;
  private stopPromise: Promise<void> | undefined;

  constructor(
    private readonly config: AgentOptions,
    private readonly deps: AgentDeps = {},
  ) {
    this.logger = config.logger.child({ node: config.nodeName });
  }

  get nodeName(): string {
    return this.config.nodeName;
  }

  /** What the faces got (after start): store, IPAM, the cluster view, the network service. */
  get context(): AgentContext | undefined {
    return this.ctx;
  }

  /** The Docker face, when `--docker-plugin` is on. */
  get docker(): DockerFace | undefined {
    return this.dockerFace;
  }

  /** Starts everything; rejects (after cleaning up) when the agent cannot run. */
  async start(): Promise<void> {
    const { config, logger, metrics } = this;
    try {
      validateConfig(config);
      const advertise = (this.advertise = resolveAdvertise(config.advertise));
      const state = LocalState.load(config.stateDir);
      this.nodeId = state.nodeId;
      const opened = await openStore(config.storeUrl, { ...parseStoreOpts(config.storeUrl, config.storeOpts), logger: logger.child({ component: 'store' }) });
      const store = (this.store = countingStore(opened, metrics));
      const ipam = new Ipam({ store, logger });
      const records = new Records(store, ipam, logger);
      const dataplane = (this.dataplane =
        this.deps.dataplane ??
        new Dataplane({
          namePrefix: config.namePrefix,
          vtep: advertise.ip,
          ...(config.vxlanPort !== undefined ? { vxlanPort: config.vxlanPort } : {}),
          gatewayBridge: config.gatewayBridge === 'none' ? false : { name: config.gatewayBridge },
          logger,
        }));
      const node = { name: config.nodeName, id: state.nodeId, vtep: advertise.ip };

      const record: NodeRecord = { name: node.name, advertise: advertise.ip, advertiseAddr: advertise.address, version: AGENT_VERSION, startedAt: this.startedAt, nodeId: node.id };
      this.membership = new Membership({
        store,
        logger: logger.child({ component: 'membership' }),
        record,
        ttlS: config.ttlS,
        // Our own lease lapsed: the store was unreachable or stalled for a while, so other nodes' leases
        // may have lapsed too. Give them time to register again before reaping anyone.
        onRegistered: (_lease, again) => again && this.outageEnded(),
      });
      await this.membership.start();
      logger.info({ advertise: advertise.address, nodeId: node.id, store: store.url }, 'node registered');

      const cluster = (this.cluster = new ClusterMirror({
        store,
        logger,
        node: node.name,
        onChange: (change, resync) => {
          this.reconciler?.noteChange(change, resync);
          this.reconciler?.schedule();
        },
        onStoreError: (prefix, err, first) => {
          metrics.storeErrors.inc();
          if (first) logger.warn({ prefix, err }, 'cluster store unreachable; keeping the data plane as it is');
        },
        onStoreBack: () => this.outageEnded(),
      }));
      metrics.resyncSource = () => cluster.resyncs;
      const reconciler = (this.reconciler = new Reconciler({
        node: node.name,
        gatewayBridge: config.gatewayBridge,
        dataplane,
        state,
        view: () => cluster.view(),
        ready: () => cluster.isSynced,
        metrics,
        logger,
        afterReconcile: (view, info) => this.afterReconcile(view, info),
      }));
      const dockerSweeps = config.dockerPlugin !== undefined && config.dockerPlugin !== 'off' && config.dockerSocket !== 'off';
      this.reaper = new Reaper({
        store,
        ipam,
        logger: logger.child({ component: 'reaper' }),
        self: node.name,
        vtep: node.vtep,
        runtimeSweeps: dockerSweeps,
        metrics,
        storeHealthy: () => cluster.storeHealthy,
        tombstones: () => cluster.reaped(),
        waitForView: (key) => cluster.waitForView(key, true),
        schedule: (delayMs) => reconciler.schedule(delayMs),
      });
      cluster.start();
      await cluster.synced(FIRST_SYNC_TIMEOUT_MS);
      await this.reaper.restore(true);
      const firstErrors = await reconciler.reconcileNow();
      if (firstErrors.length > 0) logger.warn({ errors: firstErrors.length }, 'first reconcile left data plane errors; retrying in the background');
      reconciler.start();

      const core = { config, logger, metrics, store, ipam, records, node, cluster, reconciler };
      const ctx: AgentContext = (this.ctx = { ...core, networks: new NetworkService(core), status: this });
      this.faces.push(await startApi(ctx));
      if (config.dockerPlugin !== undefined && config.dockerPlugin !== 'off') {
        this.dockerFace = await startDocker(ctx, this.deps.dockerEngine ? { engine: this.deps.dockerEngine } : {});
        this.faces.push(this.dockerFace);
      }
      this.faces.push(await startCni(ctx));
      if (config.metricsAddr !== 'off') this.metricsServer = await startMetricsServer(config.metricsAddr, metrics, this);
      this.stopJanitor = startJanitorLoop({ janitor: new Janitor({ store, ipam, logger: logger.child({ component: 'janitor' }) }), self: node.name, view: () => cluster.view(), storeHealthy: () => cluster.storeHealthy, metrics, logger });
      this.ready = true;
      if (this.faces.some((f) => f.afterReconcile)) reconciler.schedule(); // faces' first follow-up (e.g. mirroring networks into dockerd)
      logger.info({ socket: config.socketPath, metrics: config.metricsAddr, advertise: advertise.address }, 'agent ready');
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  /** Stops faces, watches and timers and releases (not revokes) the lease. The data plane is left as it is. */
  stop(): Promise<void> {
    this.stopPromise ??= this.doStop();
    return this.stopPromise;
  }

  private async doStop(): Promise<void> {
    this.stopping = true;
    this.ready = false;
    this.stopJanitor?.();
    this.reaper?.stop();
    this.reconciler?.halt();
    const work = (async () => {
      for (const face of [...this.faces].reverse()) await face.stop().catch((err) => this.logger.warn({ err }, 'a face did not stop cleanly'));
      if (this.metricsServer) {
        const s = this.metricsServer;
        await new Promise<void>((r) => {
          s.close(() => r());
          s.closeAllConnections();
        });
      }
      await this.cluster?.stop();
      await this.reconciler?.stop(); // lets a running apply finish: a half-applied batch is repaired next start anyway
      this.dataplane?.close?.();
      if (this.membership?.currentLease) await this.membership.announceRestart();
      await this.membership?.stop();
      await this.store?.close();
    })();
    const budget = new AbortController();
    await Promise.race([work, sleep(STOP_BUDGET_MS, budget.signal).catch(() => undefined)]);
    budget.abort();
    await this.reconciler?.stop();
    this.logger.info('agent stopped; data plane and node record left in place');
  }

  /** The store answers again (or our own lease came back): nobody is reaped before everyone had time to register again. */
  private outageEnded(): void {
    const quietMs = this.config.ttlS * 1000 + REAP_GRACE_MS;
    this.reaper?.noteOutageEnded(Date.now(), quietMs);
    this.logger.info({ reapQuietMs: quietMs }, 'cluster store reachable again; resynchronising');
    this.reconciler?.schedule();
  }

  private afterReconcile(view: ClusterView, info: ReconcileInfo): void {
    this.reaper?.check(view);
    if (!this.ready) return;
    for (const face of this.faces) face.afterReconcile?.(view, info);
  }

  // ---- StatusSource ----

  status(): Record<string, unknown> {
    return {
      node: this.config.nodeName,
      nodeId: this.nodeId,
      advertise: this.advertise?.ip,
      version: AGENT_VERSION,
      startedAt: this.startedAt,
      storeUrl: this.store?.url ?? this.config.storeUrl,
      ready: this.notReadyReason() === undefined,
    };
  }

  nodes(): Array<Record<string, unknown>> {
    return [...(this.cluster?.view().nodes.values() ?? [])]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => ({ name: n.name, advertise: n.advertise, version: n.version, startedAt: n.startedAt }));
  }

  notReadyReason(): string | undefined {
    if (!this.ready) return this.stopping ? 'agent is stopping' : 'first reconcile has not completed';
    if (this.cluster && !this.cluster.storeHealthy) return `cluster store ${this.store?.url ?? this.config.storeUrl} is unreachable`;
    return undefined;
  }
}
