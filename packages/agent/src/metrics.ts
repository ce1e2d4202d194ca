/**
 * Prometheus metrics (prom-client, one registry per agent) and the loopback listener serving
 * `/metrics`, `/healthz` (200 while the process runs) and `/readyz` (200 when the store is reachable
 * and the first reconcile has completed, else 503 with the reason).
 */

import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { InvalidConfigError } from './errors.ts';

/**
 * Sampling interval of the event-loop lag histogram (`nodejs_eventloop_lag_*`). prom-client's default
 * of 10 ms wakes an idle agent 100 times a second — measured on the 2-core development machine, most
 * of an idle agent's ~11 ms of CPU per second; 100 ms still catches every lag worth alerting on.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

export class AgentMetrics {
  readonly registry = new Registry();
  readonly peersProgrammed = new Gauge({ name: 'kvnet_peers_programmed', help: 'Remote endpoints programmed as FDB/neighbour entries on this host', registers: [this.registry] });
  readonly localEndpoints = new Gauge({ name: 'kvnet_local_endpoints', help: 'Endpoints on this host in the desired state', registers: [this.registry] });
  readonly reconcileDuration = new Histogram({
    name: 'kvnet_reconcile_duration_seconds',
    help: 'Duration of one reconcile (desired state computation and data plane apply)',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly reconcileErrors = new Counter({ name: 'kvnet_reconcile_errors_total', help: 'Data plane objects that failed to apply, summed over reconciles', registers: [this.registry] });
  readonly storeErrors = new Counter({ name: 'kvnet_store_errors_total', help: 'Store calls or watches that failed (unreachable, timed out)', registers: [this.registry] });
  /** Total re-lists of the agent's mirrors; read at scrape time into kvnet_watch_resyncs_total. */
  resyncSource: (() => number) | undefined;
  private resyncsSeen = 0;
  readonly watchResyncs: Counter;
  /** How many watches the agent holds on the store now; read at scrape time into kvnet_store_watches. */
  watchSource: (() => number) | undefined;
  readonly storeWatches: Gauge;
  readonly reapedEndpoints = new Counter({ name: 'kvnet_reaped_endpoints_total', help: 'Endpoints of dead nodes removed by this agent', registers: [this.registry] });
  readonly orphansRemoved = new Counter({
    name: 'kvnet_orphans_removed_total',
    help: 'Endpoint names and addresses left behind by records deleted outside kvnet, cleaned up by this agent',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly liveNodes = new Gauge({ name: 'kvnet_live_nodes', help: 'Nodes with a live record in the store', registers: [this.registry] });
  readonly storeRequests = new Counter({
    name: 'kvnet_store_requests_total',
    help: 'Calls this agent made to the store, by operation and kind (read, write, lease); lease keep-alives are not counted',
    labelNames: ['op', 'kind'] as const,
    registers: [this.registry],
  });
  readonly storeWatchEvents = new Counter({
    name: 'kvnet_store_watch_events_total',
    help: 'Changes this agent received from its store watches, by key prefix',
    labelNames: ['prefix'] as const,
    registers: [this.registry],
  });
  /** Always 1; the labels say which build runs (Prometheus' `*_build_info` convention). */
  readonly buildInfo = new Gauge({
    name: 'kvnet_build_info',
    help: 'The kvnet build this agent runs: version, git commit, Node.js version (value always 1)',
    labelNames: ['version', 'commit', 'nodejs'] as const,
    registers: [this.registry],
  });

  /** Sets {@link buildInfo} (once, at start). */
  setBuildInfo(info: { readonly version: string; readonly commit: string; readonly node: string }): void {
    this.buildInfo.reset();
    this.buildInfo.set({ version: info.version, commit: info.commit, nodejs: info.node }, 1);
  }
  /** Networks whose MTU this host's underlay cannot carry (network-mtu.ts). */
  readonly networksOverUnderlayMtu = new Gauge({ name: 'kvnet_networks_over_underlay_mtu', help: "Networks whose MTU is larger than this host's underlay carries (large packets to other hosts are dropped)", registers: [this.registry] });
  readonly networkWarnings = new Counter({
    name: 'kvnet_network_warnings_total',
    help: 'Networks reported as not working fully on this host, once each when seen (code KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY: MTU above what the underlay carries)',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  constructor() {
    const metrics = this;
    this.watchResyncs = new Counter({
      name: 'kvnet_watch_resyncs_total',
      help: 'Times a watch had to list again after an error or reset',
      registers: [this.registry],
      collect() {
        const n = metrics.resyncSource?.() ?? 0;
        if (n > metrics.resyncsSeen) {
          this.inc(n - metrics.resyncsSeen);
          metrics.resyncsSeen = n;
        }
      },
    });
    this.storeWatches = new Gauge({
      name: 'kvnet_store_watches',
      help: "Watches this agent holds on the store (on Consul each is a blocking query the servers answer at least every 15 s): 4, or on Consul 3 + 1 per network + 15 per split part",
      registers: [this.registry],
      collect() {
        this.set(metrics.watchSource?.() ?? 0);
      },
    });
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }
}

export interface HealthSource {
  /** undefined when ready, else the reason. */
  notReadyReason(): string | undefined;
}

/** `127.0.0.1:9473` → host and port; throws InvalidConfigError. */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new InvalidConfigError(`invalid --metrics-addr "${text}": expected HOST:PORT (e.g. 127.0.0.1:9473) or off`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export async function startMetricsServer(address: string, metrics: AgentMetrics, health: HealthSource): Promise<Server> {
  const { host, port } = parseListenAddress(address);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const reason = health.notReadyReason();
      if (reason) res.writeHead(503, { 'content-type': 'text/plain' }).end(`not ready: ${reason}\n`);
      else res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n');
    } else if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found (try /metrics, /healthz, /readyz)\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new InvalidConfigError(`cannot listen on --metrics-addr ${address}: ${err.code === 'EADDRINUSE' ? 'address already in use' : err.message}`)),
    );
    server.listen(port, host, () => resolve());
  });
  return server;
}
