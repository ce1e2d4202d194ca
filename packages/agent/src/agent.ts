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

import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { Dataplane, readUnderlay, type UnderlayInfo } from '@kvnet/dataplane';
import { Ipam } from '@kvnet/ipam';
import { hasCode, openStore, parseStoreOpts, sleep, StoreUnavailableError, storeErrorDetail, type KVStore } from '@kvnet/store';
import { startApi } from './api/index.ts';
import { startCni } from './cni/index.ts';
import { ClusterMirror, StoreHealth } from './cluster-mirror.ts';
import { anchorTombstoneWatches, settleVxlanPort } from './cluster-settings.ts';
import { countingStore } from './counting-store.ts';
import type { ClusterView } from './cluster-view.ts';
import { resolveAdvertise, validateConfig, type Advertise, type AgentConfig } from './config.ts';
import type { AgentContext, Face, StatusSource } from './context.ts';
import { startDocker, type DockerFace } from './docker/index.ts';
import type { DockerEngine } from './docker/engine.ts';
import { describeServers, probeServers, readableDataplane, startDoctor, type DoctorCheck } from './doctor/index.ts';
import { InvalidConfigError } from './errors.ts';
import { Janitor, startJanitorLoop } from './janitor.ts';
import { keys, type NodeRecord } from './layout.ts';
import { LocalState, StateDirLock } from './local-state.ts';
import { Membership } from './membership.ts';
import { startNamesFace, type NamesFace, type NamesFaceOptions } from './names/face.ts';
import { AgentMetrics, startMetricsServer } from './metrics.ts';
import { defaultMtuProblem, defaultNetworkMtu, MtuWarningLog, networkMtuWarnings, type DatapathSettings } from './network-mtu.ts';
import { NetworkService } from './network-service.ts';
import { Reaper, REAP_GRACE_MS } from './reaper.ts';
import { Reconciler, type DataplanePort, type ReconcileInfo } from './reconciler.ts';
import { Records } from './records.ts';
import { guardStore } from './store-guard.ts';
import { AGENT_VERSION, BUILD_INFO } from './version.ts';

export { AGENT_VERSION } from './version.ts';

/** How long to wait for the first listing of every prefix at start before giving up. */
export const FIRST_SYNC_TIMEOUT_MS = 30_000;
/** Budget of a clean stop (the contract says 5 s). */
export const STOP_BUDGET_MS = 4_000;

export interface AgentOptions extends AgentConfig {
  readonly logger: Logger;
}

/** Parts a caller may supply instead of the defaults (tests; an embedding runtime). */
export interface AgentDeps {
  /** Default: a `Dataplane` for this host's kernel, from the config. */
  readonly dataplane?: DataplanePort;
  /** Default: an Engine API client on `--docker-socket`. */
  readonly dockerEngine?: DockerEngine;
  /** The names face's resolver launch (default: see names/face.ts). */
  readonly names?: NamesFaceOptions;
  /** More `kvnet doctor` checks (the names face's DNS checks). */
  readonly doctorChecks?: readonly DoctorCheck[];
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
  private datapath: DatapathSettings | undefined;
  private ctx: AgentContext | undefined;
  private faces: Face[] = [];
  private dockerFace: DockerFace | undefined;
  private namesFace: NamesFace | undefined;
  private metricsServer: Server | undefined;
  private stopJanitor: (() => void) | undefined;
  private lock: StateDirLock | undefined;
  private health: StoreHealth | undefined;
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

  /** The names face, unless `--dns-address off`. */
  get names(): NamesFace | undefined {
    return this.namesFace;
  }

  /** Starts everything; rejects (after cleaning up) when the agent cannot run. */
  async start(): Promise<void> {
    const { config, logger, metrics } = this;
    try {
      validateConfig(config);
      const advertise = (this.advertise = resolveAdvertise(config.advertise));
      this.lock = StateDirLock.acquire(config.stateDir, config.nodeName);
      const state = LocalState.load(config.stateDir);
      this.nodeId = state.nodeId;
      metrics.setBuildInfo(BUILD_INFO);
      const opened = await openStore(config.storeUrl, { ...parseStoreOpts(config.storeUrl, config.storeOpts), logger: logger.child({ component: 'store' }) });
      const store = (this.store = countingStore(opened, metrics));
      // Faces, IPAM and the record rules fail fast while the store is known to be down (store-guard.ts).
      const health = (this.health = new StoreHealth(store.url));
      health.onSuspect((error) => logger.warn({ error }, 'a call to the cluster store failed; probing it now to see whether it is down'));
      const guarded = guardStore(store, health);
      const ipam = new Ipam({ store: guarded, logger });
      const records = new Records(guarded, ipam, logger);
      const datapath = (this.datapath = await this.settleDatapath(store, advertise));
      const dataplane = (this.dataplane =
        this.deps.dataplane ??
        new Dataplane({
          namePrefix: config.namePrefix,
          vtep: advertise.ip,
          vxlanPort: datapath.vxlanPort,
          ...(datapath.underlay ? { underlayMtu: datapath.underlay.mtu } : {}),
          // IPv6 egress wherever the host has IPv6 to give (the reconciler hands out the addresses)
          gatewayBridge: config.gatewayBridge === 'none' ? false : { name: config.gatewayBridge, ipv6: 'auto' },
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
      const lease = this.membership.currentLease;
      if (lease && lease.ttlMs + lease.expiryGraceMs > config.ttlS * 1000) {
        // e.g. Consul's session_ttl_min (10 s by default) above half of --ttl
        logger.warn({ ttlS: config.ttlS, leaseTtlMs: lease.ttlMs, leaseGraceMs: lease.expiryGraceMs }, `the store keeps a node record up to ${Math.round((lease.ttlMs + lease.expiryGraceMs) / 1000)} s after its agent died, longer than --ttl ${config.ttlS}s: dead nodes are noticed that much later (for Consul, set session_ttl_min to at most half of --ttl)`);
      }

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
        health,
      }));
      metrics.resyncSource = () => cluster.resyncs;
      metrics.watchSource = () => cluster.watches;
      const reconciler = (this.reconciler = new Reconciler({
        node: node.name,
        gatewayBridge: config.gatewayBridge,
        dataplane,
        state,
        view: () => cluster.view(),
        ready: () => cluster.isSynced,
        metrics,
        logger,
        mtuWarnings: new MtuWarningLog(datapath.underlay, metrics, logger),
        afterReconcile: (view, info) => this.afterReconcile(view, info),
      }));
      const dockerSweeps = config.dockerPlugin !== undefined && config.dockerPlugin !== 'off' && config.dockerSocket !== 'off';
      this.reaper = new Reaper({
        store: guarded,
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
        unfollowed: { networks: () => cluster.unfollowedNetworks(), owners: () => cluster.unfollowedOwners(), forget: (n) => cluster.forgetOwner(n) },
      });
      cluster.start();
      await cluster.synced(FIRST_SYNC_TIMEOUT_MS);
      await this.reaper.restore(true);
      const firstErrors = await reconciler.reconcileNow();
      if (firstErrors.length > 0) logger.warn({ errors: firstErrors.length }, 'first reconcile left data plane errors; retrying in the background');
      reconciler.start();

      const core = { config, logger, metrics, store: guarded, ipam, records, node, cluster, reconciler, datapath };
      const ctx: AgentContext = (this.ctx = { ...core, networks: new NetworkService(core), status: this });
      // Names before the faces that create endpoints (its plumb hook and Docker's Join need it) and
      // before doctor (it adds the DNS checks).
      if (config.dnsAddress !== 'off') {
        this.namesFace = await startNamesFace(ctx, this.deps.names);
        this.faces.push(this.namesFace);
      }
      const checks = [...(this.deps.doctorChecks ?? []), ...(this.namesFace ? [this.namesFace.doctorCheck] : [])];
      const doctor = startDoctor(ctx, { ...(readableDataplane(dataplane) ? { dataplane: readableDataplane(dataplane)! } : {}), egress: () => state.egress, ...(checks.length ? { checks } : {}) });
      this.faces.push(doctor);
      this.faces.push(await startApi(ctx, { doctor }));
      if (config.dockerPlugin !== undefined && config.dockerPlugin !== 'off') {
        this.dockerFace = await startDocker(ctx, { ...(this.deps.dockerEngine ? { engine: this.deps.dockerEngine } : {}), ...(this.namesFace ? { names: this.namesFace } : {}) });
        this.faces.push(this.dockerFace);
      }
      this.faces.push(await startCni(ctx));
      if (config.metricsAddr !== 'off') this.metricsServer = await startMetricsServer(config.metricsAddr, metrics, this);
      this.stopJanitor = startJanitorLoop({ janitor: new Janitor({ store: guarded, ipam, logger: logger.child({ component: 'janitor' }) }), self: node.name, view: () => cluster.view(), unfollowed: () => cluster.unfollowedNetworks(), storeHealthy: () => cluster.storeHealthy, metrics, logger });
      this.ready = true;
      if (this.faces.some((f) => f.afterReconcile)) reconciler.schedule(); // faces' first follow-up (e.g. mirroring networks into dockerd)
      logger.info({ socket: config.socketPath, metrics: config.metricsAddr, advertise: advertise.address }, 'agent ready');
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw await this.explainStartFailure(err);
    }
  }

  /** A store that does not answer at start: say what a TCP connect to each server does (refused, no answer, …). */
  private async explainStartFailure(err: unknown): Promise<unknown> {
    if (!hasCode(err, 'KVNET_STORE_UNAVAILABLE')) return err;
    const servers = describeServers(await probeServers(this.config.storeUrl).catch(() => []));
    if (!servers) return err;
    const url = this.store?.url ?? this.config.storeUrl;
    const detail = storeErrorDetail(err);
    return new StoreUnavailableError(url, `${detail} [${servers}]`, { cause: err });
  }

  /**
   * What must hold before the data plane is built: the cluster's VXLAN port (recorded by the first
   * agent; refuses to start when `--vxlan-port` disagrees, naming both), this host's underlay interface
   * and MTU (read in this process's network namespace, where the VTEP address is), and the default MTU
   * of networks this agent creates (`--default-mtu` must fit the underlay).
   */
  private async settleDatapath(store: KVStore, advertise: Advertise): Promise<DatapathSettings> {
    const { config, logger } = this;
    const port = await settleVxlanPort(store, config.vxlanPort, config.nodeName);
    if (port.recorded) logger.info({ vxlanPort: port.port }, "recorded the cluster's VXLAN port");
    if (await anchorTombstoneWatches(store, config.nodeName)) logger.info({ key: keys.reapedAnchor() }, 'wrote the anchor of the tombstone watches');
    let underlay: UnderlayInfo | undefined;
    try {
      underlay = this.deps.dataplane ? await this.deps.dataplane.readUnderlay?.() : await readUnderlay({ address: advertise.ip });
    } catch (err) {
      throw new InvalidConfigError(`cannot read the underlay interface of --cluster-advertise ${advertise.ip} (its MTU decides the overlay's): ${(err as Error).message}`, { cause: err });
    }
    const problem = defaultMtuProblem(config.defaultMtu, underlay);
    if (problem) throw new InvalidConfigError(problem);
    const settings: DatapathSettings = { vxlanPort: port.port, ...(underlay ? { underlay } : {}), defaultMtu: defaultNetworkMtu(config.defaultMtu, underlay) };
    logger.info({ vxlanPort: settings.vxlanPort, underlay: underlay?.ifname, underlayMtu: underlay?.mtu, defaultMtu: settings.defaultMtu }, 'data path settled');
    return settings;
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
    this.lock?.release();
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
    const reason = this.notReadyReason();
    return {
      node: this.config.nodeName,
      nodeId: this.nodeId,
      advertise: this.advertise?.ip,
      version: AGENT_VERSION,
      commit: BUILD_INFO.commit,
      pid: process.pid,
      startedAt: this.startedAt,
      storeUrl: this.store?.url ?? this.config.storeUrl,
      ready: reason === undefined,
      ...(reason !== undefined ? { notReady: reason } : {}),
      phase: this.stopping ? 'stopping' : this.ready ? 'running' : 'starting',
      store: { url: this.store?.url ?? this.config.storeUrl, ...this.health?.report() },
      // networks whose endpoints this agent does not watch: it has none there (Consul; endpoint-mirrors.ts)
      ...(this.cluster ? { networksNotFollowed: this.cluster.unfollowedNetworks().length } : {}),
      ...(this.config.dockerPlugin !== undefined && this.config.dockerPlugin !== 'off' ? { dockerPlugin: this.config.dockerPlugin } : {}),
      ...this.datapathStatus(),
    };
  }

  /** The data path part of `/v1/status`: VXLAN port, underlay, default MTU, and the networks this underlay cannot carry. */
  private datapathStatus(): Record<string, unknown> {
    const dp = this.datapath;
    if (!dp) return {};
    const u = dp.underlay;
    return {
      vxlanPort: dp.vxlanPort,
      ...(u ? { underlay: { ifname: u.ifname, mtu: u.mtu, address: u.address, family: u.family, overlayMtu: u.overlayMtu } } : {}),
      defaultMtu: dp.defaultMtu,
      networkWarnings: this.cluster ? networkMtuWarnings(this.cluster.view(), u) : [],
    };
  }

  nodes(): Array<Record<string, unknown>> {
    return [...(this.cluster?.view().nodes.values() ?? [])]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => ({ name: n.name, advertise: n.advertise, version: n.version, startedAt: n.startedAt }));
  }

  notReadyReason(): string | undefined {
    if (!this.ready) return this.stopping ? 'agent is stopping' : 'first reconcile has not completed';
    const store = this.health?.report();
    const url = this.store?.url ?? this.config.storeUrl;
    const age = (since: string): string => `${Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000))} s`;
    if (store?.state === 'unavailable') return `cluster store ${url} is unreachable since ${store.since} (${age(store.since)})${store.lastError ? `: ${store.lastError}` : ''}`;
    if (store?.state === 'resyncing') return `resyncing with cluster store ${url} since ${store.since} (${age(store.since)}): it answers again, the view is being listed`;
    return undefined;
  }
}
