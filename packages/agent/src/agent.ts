/**
 * The per-host agent: joins the cluster, mirrors the store's networks, endpoints and nodes, keeps the
 * kernel equal to what they describe, reaps dead nodes, and serves the local API.
 *
 * Lifecycle: {@link Agent.start} (register → list+watch → first reconcile → API and metrics
 * listeners → "agent ready") and {@link Agent.stop}, which leaves the data plane and the node's
 * records alone (the lease is released, not revoked) so a restart does not disturb traffic.
 *
 * Reconciliation never depends on having seen every event: any change (or re-list) schedules one
 * debounced run that computes the full desired state from the current view and hands it to
 * `Dataplane.apply`. While the store is unreachable the view stays as it was — nothing is torn down —
 * and the mirrors re-list when it is back.
 */

import { readFileSync, statSync } from 'node:fs';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { Dataplane, type DataplaneError } from '@kvnet/dataplane';
import { Ipam } from '@kvnet/ipam';
import {
  openStore,
  parseStoreOpts,
  PrefixMirror,
  sleep,
  type KVStore,
} from '@kvnet/store';
import { ApiServer } from './api-server.ts';
import { allEndpoints, buildClusterView, type ClusterView } from './cluster-view.ts';
import { resolveAdvertise, validateConfig, type AgentConfig, type Advertise } from './config.ts';
import { computeDesiredState, EGRESS_IFNAME } from './desired-state.ts';
import { StoreDockerBackend, type DockerEndpointRecord } from './docker-backend.ts';
import { withDockerEndpoints } from './docker-desired-state.ts';
import { DockerDriver } from './docker-driver.ts';
import { DockerEngine } from './docker-engine.ts';
import { DockerNetworkSync } from './docker-network-sync.ts';
import { DockerPluginServer } from './docker-plugin.ts';
import { AgentNotReadyError } from './errors.ts';
import { assignEgress } from './egress.ts';
import { Janitor, JANITOR_INTERVAL_MS, JANITOR_RING_KEY } from './janitor.ts';
import {
  decodeRecord,
  encodeRecord,
  encodeText,
  ENDPOINTS,
  keys,
  NETWORKS,
  NODES,
  type EndpointRecord,
  type NodeRecord,
  type RestartMarker,
} from './layout.ts';
import { LocalState } from './local-state.ts';
import { Membership } from './membership.ts';
import { AgentMetrics, startMetricsServer } from './metrics.ts';
import { NetworkService } from './network-service.ts';
import { chooseReaper, DeadNodeTracker, reapNode } from './reaper.ts';

/** Changes arriving within this window are folded into one reconcile. */
export const RECONCILE_DEBOUNCE_MS = 5;
/** Retry of a reconcile that left data plane errors (sandbox missing, kernel refusal), doubling. */
export const RECONCILE_RETRY_BASE_MS = 1_000;
export const RECONCILE_RETRY_CAP_MS = 30_000;
/**
 * Wait after a node's record is gone before its endpoints are reaped: covers an agent restart that
 * took a little longer than its lease's remaining TTL.
 */
export const REAP_GRACE_MS = 2_000;
/**
 * A cleanly stopped agent leaves `restarting/<node>` saying "do not reap me before now + this": its
 * node record lapses after the TTL, but a restart (or upgrade) slower than that must not cost its
 * containers their peers. A node that does not come back is reaped after this.
 */
export const RESTART_PROTECTION_MS = 30_000;
/** How long a stopping agent tries to write its restart marker (the store may be down). */
const RESTART_MARK_TIMEOUT_MS = 1_000;
/** How long to wait for the first listing of every prefix at start before giving up. */
export const FIRST_SYNC_TIMEOUT_MS = 30_000;
/** Budget of a clean stop (the contract says 5 s). */
export const STOP_BUDGET_MS = 4_000;
/**
 * An unchanged desired state is not re-applied (that costs kernel reads) unless this long has passed
 * since the last apply: the periodic apply repairs drift (objects changed behind the agent's back).
 */
export const PERIODIC_APPLY_MS = 30_000;
const VIEW_POLL_MS = 10;
/** Next Docker sync while endpoints wait for dockerd to list them (to learn their container names). */
export const DOCKER_SYNC_PENDING_MS = 1_000;

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

/** Defaults for a config from partial input (what the CLI does after reading flags and env). */
export function defaultNodeName(): string {
  return hostname();
}

export class Agent {
  private readonly logger: Logger;
  readonly metrics = new AgentMetrics();
  private store: KVStore | undefined;
  private dataplane: Dataplane | undefined;
  private membership: Membership | undefined;
  private mirrors: { networks: PrefixMirror; endpoints: PrefixMirror; nodes: PrefixMirror; reaped: PrefixMirror } | undefined;
  private api: ApiServer | undefined;
  private dockerPlugin: DockerPluginServer | undefined;
  private dockerDriver: DockerDriver | undefined;
  private dockerSync: DockerNetworkSync | undefined;
  private metricsServer: Server | undefined;
  private state: LocalState | undefined;
  private advertise: Advertise | undefined;
  private startedAt = new Date().toISOString();
  private ready = false;
  private stopping = false;
  /** This agent holds its node name (so it may announce a restart for it). */
  private registered = false;
  private stopPromise: Promise<void> | undefined;
  private storeHealthy = true;
  /**
   * Every mirror has listed at least once. Before that the view is partial (networks without their
   * endpoints, say) and must never be applied: it would tear down what the missing part describes.
   */
  private allSynced = false;
  private gateway: { subnet: string; gateway: string } | undefined;
  private readonly tracker: DeadNodeTracker;
  private readonly reaping = new Set<string>();
  private restoring = false;
  // reconcile bookkeeping
  private requested = 0;
  private started = 0;
  private running = false;
  private debounceTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private reapTimer: NodeJS.Timeout | undefined;
  private retryDelay = RECONCILE_RETRY_BASE_MS;
  private periodicTimer: NodeJS.Timeout | undefined;
  private janitorTimer: NodeJS.Timeout | undefined;
  private janitor: Janitor | undefined;
  private janitorRunning = false;
  /** The last desired state applied without errors (JSON), and when. */
  private lastApplied: { state: string; at: number } | undefined;
  private viewCache: { stamp: string; view: ClusterView } | undefined;
  private waiters: Array<{ gen: number; resolve: (errors: readonly DataplaneError[]) => void }> = [];
  private loopDone: Promise<void> = Promise.resolve();

  constructor(private readonly config: AgentOptions) {
    this.logger = config.logger.child({ node: config.nodeName });
    // Counted from when the node's record is gone (the store has already waited out its lease).
    this.tracker = new DeadNodeTracker(REAP_GRACE_MS);
  }

  get nodeName(): string {
    return this.config.nodeName;
  }

  /** Starts everything; rejects (after cleaning up) when the agent cannot run. */
  async start(): Promise<void> {
    const { config, logger } = this;
    try {
      validateConfig(config);
      this.advertise = resolveAdvertise(config.advertise);
      this.state = LocalState.load(config.stateDir);
      const storeOpts = parseStoreOpts(config.storeUrl, config.storeOpts);
      this.store = await openStore(config.storeUrl, { ...storeOpts, logger: logger.child({ component: 'store' }) });
      const store = this.store;
      const ipam = new Ipam({ store, logger });
      this.dataplane = new Dataplane({
        namePrefix: config.namePrefix,
        vtep: this.advertise.ip,
        ...(config.vxlanPort !== undefined ? { vxlanPort: config.vxlanPort } : {}),
        gatewayBridge: config.gatewayBridge === 'none' ? false : { name: config.gatewayBridge },
        logger,
      });
      const record: NodeRecord = {
        name: config.nodeName,
        advertise: this.advertise.ip,
        advertiseAddr: this.advertise.address,
        version: AGENT_VERSION,
        startedAt: this.startedAt,
        nodeId: this.state.nodeId,
      };
      this.membership = new Membership({
        store,
        logger: logger.child({ component: 'membership' }),
        record,
        ttlS: config.ttlS,
        onRegistered: (_lease, again) => {
          if (!again) return;
          // Our own lease lapsed: the store was unreachable or stalled for a while, so other nodes'
          // leases may have lapsed too. Give them time to register again before reaping anyone.
          this.tracker.noteOutageEnded(Date.now(), this.config.ttlS * 1000 + REAP_GRACE_MS);
          this.schedule();
        },
      });
      await this.membership.start();
      this.registered = true;
      await store.delete(keys.restarting(config.nodeName)).catch((err) => logger.warn({ err }, 'could not remove the restart marker'));
      logger.info({ advertise: this.advertise.address, nodeId: this.state.nodeId, store: store.url }, 'node registered');

      const mirror = (prefix: string): PrefixMirror =>
        new PrefixMirror(store, prefix, {
          logger: logger.child({ component: 'mirror', prefix }),
          onChange: (change) => {
            if (change.resync && this.ready) logger.debug({ prefix, events: change.events.length }, 'mirror re-listed');
            this.schedule();
          },
          onHealth: (healthy, err) => this.onStoreHealth(prefix, healthy, err),
        });
      this.mirrors = {
        networks: mirror(NETWORKS),
        endpoints: mirror(ENDPOINTS),
        nodes: mirror(NODES),
        reaped: mirror(keys.reapedOf(config.nodeName)),
      };
      const mirrors = Object.values(this.mirrors);
      this.metrics.resyncSource = () => mirrors.reduce((s, m) => s + m.resyncs, 0);
      for (const m of mirrors) m.start();
      const synced = Promise.all(mirrors.map((m) => m.synced)).then(() => {
        this.allSynced = true;
      });
      const timer = new AbortController();
      const timeout = sleep(FIRST_SYNC_TIMEOUT_MS, timer.signal).then(() => {
        throw new AgentNotReadyError(`could not list the cluster store ${store.url} within ${FIRST_SYNC_TIMEOUT_MS / 1000}s`);
      });
      try {
        await Promise.race([synced, timeout]);
      } finally {
        timer.abort();
        timeout.catch(() => undefined);
      }

      await this.restoreReaped(true);
      const firstErrors = await this.reconcileNow();
      if (firstErrors.length > 0) logger.warn({ errors: firstErrors.length }, 'first reconcile left data plane errors; retrying in the background');

      const service = new NetworkService({
        store,
        ipam,
        logger: logger.child({ component: 'api' }),
        node: config.nodeName,
        nodeId: this.state.nodeId,
        vtep: this.advertise.ip,
        view: () => this.view(),
        waitForView: (key, present, timeoutMs) => this.waitForView(key, present, timeoutMs),
        reconcileNow: () => this.reconcileNow(),
        egressIfname: config.gatewayBridge === 'none' ? undefined : EGRESS_IFNAME,
      });
      this.api = new ApiServer({ socketPath: config.socketPath, service, status: this, logger: logger.child({ component: 'api' }) });
      await this.api.start();
      if (config.dockerPlugin !== undefined && config.dockerPlugin !== 'off') {
        const dockerLog = logger.child({ component: 'docker' });
        const engine = config.dockerSocket === 'off' ? undefined : new DockerEngine(config.dockerSocket);
        const backend = new StoreDockerBackend({
          store,
          ipam,
          service,
          logger: dockerLog,
          node: config.nodeName,
          nodeId: this.state.nodeId,
          vtep: this.advertise.ip,
          view: () => this.view(),
          waitForView: (key, present, timeoutMs) => this.waitForView(key, present, timeoutMs),
          reconcileNow: () => this.reconcileNow(),
        });
        this.dockerDriver = new DockerDriver({ backend, logger: dockerLog, ...(config.dockerScope ? { scope: config.dockerScope } : {}), ...(engine ? { engine } : {}) });
        this.dockerPlugin = new DockerPluginServer({ socketPath: config.dockerPlugin, handlers: this.dockerDriver, logger: dockerLog });
        await this.dockerPlugin.start();
        if (engine) {
          this.dockerSync = new DockerNetworkSync({
            engine,
            node: config.nodeName,
            logger: dockerLog,
            removeEndpoint: (dockerNetworkId, dockerEndpointId) => backend.deleteEndpoint(dockerNetworkId, dockerEndpointId),
            nameEndpoint: (nid, eid, name) => backend.nameEndpoint(nid, eid, name),
            mirrorNetworks: config.dockerScope !== 'global',
            ...(config.dockerDriverName ? { driverName: config.dockerDriverName } : {}),
          });
        }
      }
      if (config.metricsAddr !== 'off') this.metricsServer = await startMetricsServer(config.metricsAddr, this.metrics, this);
      this.periodicTimer = setInterval(() => this.schedule(), PERIODIC_APPLY_MS);
      this.janitor = new Janitor({ store, ipam, logger: logger.child({ component: 'janitor' }) });
      this.janitorTimer = setInterval(() => void this.runJanitor(), JANITOR_INTERVAL_MS);
      this.ready = true;
      if (this.dockerSync) this.schedule(); // first mirroring of kvnet networks into Docker
      logger.info({ socket: config.socketPath, metrics: config.metricsAddr, advertise: this.advertise.address }, 'agent ready');
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  /** Stops listeners, watches and timers and releases (not revokes) the lease. The data plane is left as it is. */
  stop(): Promise<void> {
    this.stopPromise ??= this.doStop();
    return this.stopPromise;
  }

  private async doStop(): Promise<void> {
    this.stopping = true;
    this.ready = false;
    clearTimeout(this.debounceTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.reapTimer);
    clearInterval(this.periodicTimer);
    clearInterval(this.janitorTimer);
    const work = (async () => {
      await this.dockerPlugin?.stop();
      await this.dockerDriver?.stop();
      await this.api?.stop();
      if (this.metricsServer) {
        const s = this.metricsServer;
        await new Promise<void>((r) => {
          s.close(() => r());
          s.closeAllConnections();
        });
      }
      await Promise.all(Object.values(this.mirrors ?? {}).map((m) => m.stop()));
      await this.loopDone; // let a running apply finish: a half-applied batch is repaired next start anyway
      if (this.registered && this.store) await this.announceRestart(this.store);
      await this.membership?.stop();
      await this.store?.close();
    })();
    const budget = new AbortController();
    await Promise.race([work, sleep(STOP_BUDGET_MS, budget.signal).catch(() => undefined)]);
    budget.abort();
    for (const w of this.waiters.splice(0)) w.resolve([]);
    this.logger.info('agent stopped; data plane and node record left in place');
  }

  /** Writes `restarting/<node>` (best effort, bounded): see {@link RESTART_PROTECTION_MS}. */
  private async announceRestart(store: KVStore): Promise<void> {
    const marker: RestartMarker = {
      node: this.config.nodeName,
      nodeId: this.state!.nodeId,
      until: new Date(Date.now() + RESTART_PROTECTION_MS).toISOString(),
    };
    const signal = AbortSignal.timeout(RESTART_MARK_TIMEOUT_MS);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${RESTART_MARK_TIMEOUT_MS} ms`)), RESTART_MARK_TIMEOUT_MS + 100);
    });
    try {
      await Promise.race([store.put(keys.restarting(this.config.nodeName), encodeRecord(marker), { signal }), deadline]);
    } catch (err) {
      this.logger.warn({ err }, 'could not announce the restart; the node may be reaped if it stays away longer than its TTL');
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- status (StatusSource / HealthSource) ----

  status(): Record<string, unknown> {
    return {
      node: this.config.nodeName,
      nodeId: this.state?.nodeId,
      advertise: this.advertise?.ip,
      version: AGENT_VERSION,
      startedAt: this.startedAt,
      storeUrl: this.store?.url ?? this.config.storeUrl,
      ready: this.notReadyReason() === undefined,
    };
  }

  nodes(): Array<Record<string, unknown>> {
    return [...this.view().nodes.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => ({ name: n.name, advertise: n.advertise, version: n.version, startedAt: n.startedAt }));
  }

  notReadyReason(): string | undefined {
    if (!this.ready) return this.stopping ? 'agent is stopping' : 'first reconcile has not completed';
    if (!this.storeHealthy) return `cluster store ${this.store?.url ?? this.config.storeUrl} is unreachable`;
    return undefined;
  }

  // ---- view ----

  view(): ClusterView {
    const m = this.mirrors;
    if (!m) return { networks: new Map(), endpoints: new Map(), nodes: new Map() };
    // Rebuilt only when a mirror moved (decoding every record on each API read would not scale).
    const stamp = [m.networks, m.endpoints, m.nodes].map((x) => `${x.revision ?? ''}:${x.view.size}:${x.resyncs}`).join('|');
    if (this.viewCache?.stamp === stamp) return this.viewCache.view;
    const view = buildClusterView(
      { networks: m.networks.view.values(), endpoints: m.endpoints.view.values(), nodes: m.nodes.view.values() },
      (key, err) => this.logger.warn({ key, err }, 'skipping unreadable store record'),
    );
    this.viewCache = { stamp, view };
    return view;
  }

  private mirrorFor(key: string): PrefixMirror | undefined {
    const m = this.mirrors;
    if (!m) return undefined;
    return [m.networks, m.endpoints, m.nodes, m.reaped].find((x) => key.startsWith(`${x.prefix}/`));
  }

  private async waitForView(key: string, present: boolean, timeoutMs: number): Promise<boolean> {
    const mirror = this.mirrorFor(key);
    if (!mirror) return false;
    const deadline = Date.now() + timeoutMs;
    while (mirror.view.has(key) !== present) {
      if (Date.now() > deadline || this.stopping) return false;
      await sleep(VIEW_POLL_MS);
    }
    return true;
  }

  private onStoreHealth(prefix: string, healthy: boolean, err: unknown): void {
    const allHealthy = Object.values(this.mirrors ?? {}).every((m) => m.healthy);
    if (!healthy) {
      this.metrics.storeErrors.inc();
      if (this.storeHealthy) this.logger.warn({ prefix, err }, 'cluster store unreachable; keeping the data plane as it is');
      this.storeHealthy = false;
    } else if (allHealthy && !this.storeHealthy) {
      this.storeHealthy = true;
      // Everyone's leases may have lapsed during the outage: give their agents time to register again.
      const quietMs = this.config.ttlS * 1000 + REAP_GRACE_MS;
      this.tracker.noteOutageEnded(Date.now(), quietMs);
      this.logger.info({ reapQuietMs: quietMs }, 'cluster store reachable again; resynchronising');
      this.schedule();
    }
  }

  // ---- reconcile scheduling ----

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
            this.logger.error({ err }, 'reconcile failed; retrying');
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

  private scheduleRetry(): void {
    if (this.retryTimer || this.stopping) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, RECONCILE_RETRY_CAP_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.schedule();
    }, delay);
  }

  private async reconcileOnce(): Promise<readonly DataplaneError[]> {
    const mirrors = this.mirrors;
    if (!mirrors || !this.dataplane || !this.state || !this.allSynced) return [];
    const stopTimer = this.metrics.reconcileDuration.startTimer();
    const view = this.view();
    const me = this.config.nodeName;

    // Host-local egress addresses on the gateway bridge for local endpoints of non-internal networks.
    const local = allEndpoints(view).filter((e) => e.node === me);
    let egress = new Map<string, string>();
    const wantsEgress = local.some((e) => e.netns && view.networks.get(e.network) && !view.networks.get(e.network)!.internal);
    if (this.config.gatewayBridge !== 'none' && wantsEgress) {
      if (!this.gateway) {
        try {
          this.gateway = await this.dataplane.ensureGatewayBridge();
        } catch (err) {
          this.logger.error({ err }, 'cannot set up the gateway bridge; endpoints get no egress for now');
          this.scheduleRetry();
        }
      }
      if (this.gateway) {
        const assigned = assignEgress(local, view.networks, this.gateway, this.state.egress);
        egress = assigned.egress;
        if (assigned.unassigned.length > 0) {
          this.logger.error({ eids: assigned.unassigned, subnet: this.gateway.subnet }, 'gateway bridge subnet is full; some endpoints get no egress');
        }
        this.state.setEgress(egress);
      }
    } else {
      this.state.setEgress(egress);
    }

    const base = computeDesiredState({ view, node: me, egress });
    // Docker endpoints (records with `handoff`) are plumbed in the data plane's Docker mode.
    const desired = { ...base, state: withDockerEndpoints(base.state, view, me) };
    let errors: readonly DataplaneError[] = [];
    const stateJson = JSON.stringify(desired.state);
    const unchanged = this.lastApplied?.state === stateJson && Date.now() - this.lastApplied.at < PERIODIC_APPLY_MS;
    try {
      const report = unchanged ? { errors: [], changes: 0, durationMs: 0 } : await this.dataplane.apply(desired.state);
      errors = report.errors;
      this.lastApplied = errors.length === 0 ? { state: stateJson, at: unchanged ? this.lastApplied!.at : Date.now() } : undefined;
      this.metrics.peersProgrammed.set(desired.peers);
      this.metrics.localEndpoints.set(desired.state.networks.reduce((s, n) => s + n.endpoints.length, 0));
      if (report.changes > 0) {
        this.logger.info({ changes: report.changes, networks: desired.state.networks.length, peers: desired.peers, ms: Math.round(report.durationMs) }, 'data plane updated');
      }
    } catch (err) {
      this.lastApplied = undefined;
      this.logger.error({ err }, 'data plane apply failed');
      this.scheduleRetry();
    }
    if (!unchanged) stopTimer();
    if (errors.length > 0) {
      this.metrics.reconcileErrors.inc(errors.length);
      this.scheduleRetry();
    } else {
      this.retryDelay = RECONCILE_RETRY_BASE_MS;
    }

    this.metrics.liveNodes.set(view.nodes.size);
    this.checkDeadNodes(view);
    if (this.dockerSync && this.storeHealthy && this.ready) {
      this.dockerSync
        .run(() => this.view())
        .then((r) => {
          if (r.errors.length > 0) this.scheduleRetry();
          else if (r.pending > 0) this.schedule(DOCKER_SYNC_PENDING_MS); // name new endpoints once dockerd lists them
        })
        .catch((err) => {
          this.logger.warn({ err }, 'cannot reach the local dockerd to mirror kvnet networks; will retry');
          this.scheduleRetry();
        });
    }
    if (mirrors.reaped.view.size > 0 && !this.restoring) void this.restoreReaped(false);
    return errors;
  }

  // ---- orphans ----

  private async runJanitor(): Promise<void> {
    if (!this.janitor || this.janitorRunning || this.stopping || !this.storeHealthy) return;
    const view = this.view();
    if (chooseReaper(view.nodes.keys(), JANITOR_RING_KEY) !== this.config.nodeName) return;
    this.janitorRunning = true;
    try {
      const r = await this.janitor.run(view);
      if (r.names) this.metrics.orphansRemoved.inc({ kind: 'name' }, r.names);
      if (r.addresses) this.metrics.orphansRemoved.inc({ kind: 'address' }, r.addresses);
      if (r.tombstones) this.metrics.orphansRemoved.inc({ kind: 'tombstone' }, r.tombstones);
    } catch (err) {
      this.logger.warn({ err }, 'janitor run failed; will try again');
    } finally {
      this.janitorRunning = false;
    }
  }

  // ---- dead nodes ----

  private checkDeadNodes(view: ClusterView): void {
    const now = Date.now();
    const live = new Set(view.nodes.keys());
    const owners = new Set(allEndpoints(view).map((e) => e.node));
    this.tracker.update(live, owners, now);
    if (!this.storeHealthy) return;
    for (const dead of this.tracker.due(now)) {
      if (this.reaping.has(dead)) continue;
      const reaper = chooseReaper(live, dead);
      if (reaper !== this.config.nodeName) continue;
      const endpoints = allEndpoints(view).filter((e) => e.node === dead);
      this.reaping.add(dead);
      this.logger.warn({ deadNode: dead, endpoints: endpoints.length }, 'node is gone; reaping its endpoints unless it announced a restart');
      reapNode({ store: this.store!, ipam: new Ipam({ store: this.store!, logger: this.logger }), logger: this.logger.child({ component: 'reaper' }), self: this.config.nodeName }, dead, endpoints, view.networks)
        .then((r) => {
          if ('postponedUntil' in r) {
            this.tracker.postpone(dead, r.postponedUntil);
            this.logger.info({ deadNode: dead, until: new Date(r.postponedUntil).toISOString() }, 'node announced a restart; not reaping it before then');
          } else this.metrics.reapedEndpoints.inc(r.reaped);
        })
        .catch((err) => {
          this.metrics.storeErrors.inc();
          this.logger.warn({ err, deadNode: dead }, 'reaping failed; will try again');
        })
        .finally(() => {
          this.reaping.delete(dead);
          this.schedule(REAP_GRACE_MS / 4);
        });
    }
    clearTimeout(this.reapTimer);
    const next = this.tracker.nextDueAt();
    if (next !== undefined && !this.stopping) {
      this.reapTimer = setTimeout(() => this.schedule(), Math.max(50, next - now + 10));
    }
  }

  /**
   * Brings back this node's endpoints that a reaper removed while the node was considered dead (the
   * tombstones under `reaped/<node>/`), when their network and netns still exist; drops the rest.
   */
  private async restoreReaped(initial: boolean): Promise<void> {
    const mirrors = this.mirrors;
    const store = this.store;
    if (!mirrors || !store || this.restoring) return;
    this.restoring = true;
    try {
      const ipam = new Ipam({ store, logger: this.logger });
      for (const entry of [...mirrors.reaped.view.values()]) {
        let ep: EndpointRecord;
        try {
          ep = decodeRecord<EndpointRecord>(entry.value, entry.key);
        } catch {
          await store.delete(entry.key).catch(() => undefined);
          continue;
        }
        const log = this.logger.child({ nid: ep.network, eid: ep.id, endpoint: ep.name });
        const netEntry = await store.get(keys.network(ep.network));
        // A Docker endpoint has no netns path of kvnet's: restore it, and let the Docker sync remove it
        // if dockerd no longer lists it (DockerNetworkSync's stale-endpoint sweep).
        const dockerSyncs = this.config.dockerPlugin !== undefined && this.config.dockerPlugin !== 'off' && this.config.dockerSocket !== 'off';
        let alive = (ep as DockerEndpointRecord).docker !== undefined && dockerSyncs;
        if (!alive && ep.netns !== undefined) {
          try {
            alive = statSync(ep.netns) !== undefined;
          } catch {
            alive = false;
          }
        }
        if (!netEntry || !alive) {
          log.info({ netns: ep.netns }, 'reaped endpoint is gone here too; dropping its tombstone');
          await store.deleteIf(entry.key, entry.revision).catch(() => undefined);
          continue;
        }
        const net = decodeRecord<{ poolId: string }>(netEntry.value, netEntry.key);
        try {
          await ipam.allocateAddress(net.poolId, { owner: ep.id, address: ep.ip });
        } catch (err) {
          log.error({ err, address: ep.address }, 'cannot restore a reaped endpoint: its address is taken; it will be removed here');
          await store.deleteIf(entry.key, entry.revision).catch(() => undefined);
          continue;
        }
        const r = await store.txn([
          { op: 'check', key: netEntry.key, if: { revision: netEntry.revision } },
          { op: 'put', key: keys.epname(ep.network, ep.name), value: encodeText(ep.id), if: { absent: true } },
          { op: 'put', key: keys.endpoint(ep.network, ep.id), value: encodeRecord({ ...ep, vtep: this.advertise?.ip, reapedBy: undefined, reapedAt: undefined }), if: { absent: true } },
          { op: 'delete', key: entry.key, if: { revision: entry.revision } },
        ]);
        if (r.ok) {
          log.warn({ address: ep.address }, 'restored an endpoint that was reaped while this node was away');
          if (initial) await this.waitForView(keys.endpoint(ep.network, ep.id), true, 5_000);
        } else {
          log.error('cannot restore a reaped endpoint: its name or network changed; it will be removed here');
          await ipam.releaseAddress(net.poolId, ep.address, ep.id).catch(() => undefined);
          await store.deleteIf(entry.key, entry.revision).catch(() => undefined);
        }
      }
    } catch (err) {
      this.logger.warn({ err }, 'restoring reaped endpoints failed; will try again');
    } finally {
      this.restoring = false;
    }
  }
}

