/**
 * The names face as the agent runs it: {@link startNamesFace} takes the agent's context and keeps the
 * resolver process (names-client.ts) fed from the cluster view.
 *
 * - **After every reconcile** the table's shape ({@link tableShape}: the networks of the local
 *   sandboxes, the sandboxes, one listener per such network in its overlay namespace,
 *   `/run/netns/<prefix>-<nid>`) is rebuilt from the view. When it is the one the resolver holds, only
 *   the records that changed are sent (a patch, {@link recordPatch}: O(changes) in the agent and in the
 *   resolver, whatever the number of endpoints); otherwise, and after the resolver was restarted or
 *   refused a patch, the whole table. Passes never overlap; a request during a pass is folded into the
 *   next one. After a reconcile that moved only remote endpoints, at most one pass per
 *   {@link NAMES_PEERS_INTERVAL_MS} (pass-throttle.ts: a burst of remote connects costs a few passes
 *   per host, not one each).
 * - **Before a new local endpoint is handed back** (a plumb hook: `kvnet network connect` returning,
 *   Docker's CreateEndpoint answered) a pass that includes it has run: its network's listener is open
 *   before the container's first query, and a standalone sandbox has its route to the resolver address.
 * - **Standalone sandboxes** (records with `netns`): the route through the {@link routeHolder}'s
 *   interface, added with `ip route replace` whenever the holder changes.
 * - **Docker sandboxes**: Join says which sandbox an endpoint is in and whether its answer carries
 *   the route ({@link NamesFace.dockerJoin}); Leave moves the route to another kvnet interface of the
 *   sandbox when its holder goes ({@link NamesFace.dockerLeave}). Both are remembered in the state dir
 *   (docker-sandboxes.ts).
 * - **Stop** disconnects and leaves the resolver answering from the last table (an agent restart or a
 *   store outage does not stop resolution); {@link NamesFace.uninstall} makes it exit and remove its addresses.
 */

import { existsSync } from 'node:fs';
import { overlayNetnsName } from '@kvnet/dataplane';
import { sleep } from '@kvnet/store';
import type { ClusterView } from '../cluster-view.ts';
import { endpointsOfNode } from '../cluster-view.ts';
import { resolverAddressOf, resolverSocketFor } from '../config.ts';
import type { AgentContext, Face } from '../context.ts';
import type { EndpointRecord } from '../layout.ts';
import { PLUMB_HOOK_BUDGET_MS } from '../network-service.ts';
// What this face needs to know about dockerd: which process it is (to enter its mount namespace), and
// whether its containers ask the resolver at all (for doctor).
import { assessDockerDns, findDockerd, readDockerDnsFacts } from '../docker/dns-setup.ts';
import { DockerEngine } from '../docker/engine.ts';
import type { DoctorCheck, DoctorFinding } from '../doctor/report.ts';
import { DockerSandboxes } from './docker-sandboxes.ts';
import { listenersFor, localSandboxes, recordPatch, routeHolder, sentRecords, tableOfShape, tableShape, type SentRecords } from './name-table.ts';
import { PassThrottle } from './pass-throttle.ts';
import { DEFAULT_RESOLVER_ADDRESS, type Names, type NamesContext, type ResolverStatus } from './names.ts';
import { defaultResolverCommand, startNames } from './names-client.ts';
import { ensureSandboxRoute, ensureSandboxRouteByMac, joinStaticRoutes } from './resolver-address.ts';

/** Where overlay namespaces live (the data plane names them `<prefix>-<network id>`). */
export const NETNS_DIR = '/run/netns';
/** A failed pass (the resolver unreachable, a route that could not be added) is tried again after this long. */
export const NAMES_RETRY_MS = 2_000;
/** Least time between two passes asked for by reconciles that moved only remote endpoints. */
export const NAMES_PEERS_INTERVAL_MS = 250;

/** One connected route of a Docker Join answer. */
export interface JoinRoute {
  readonly Destination: string;
  readonly RouteType: number;
  readonly NextHop: string;
}

/** The running names face. */
export interface NamesFace extends Face {
  /** The resolver address containers ask. */
  readonly address: string;
  /**
   * Docker's Join of a local endpoint into `sandboxKey`: remembered (it survives agent restarts); the
   * `StaticRoutes` for the Join answer — the route to the resolver address when this endpoint becomes
   * the sandbox's route holder, else none. Synchronous: it never delays a Join.
   */
  dockerJoin(endpointId: string, sandboxKey: string): JoinRoute[];
  /**
   * Docker's Leave of a local endpoint: forgotten; if it held its sandbox's route, the route moves to
   * the interface of the sandbox's next kvnet endpoint (dockerd removes the leaving interface, and its
   * route with it, only after Leave returns). Never throws; a failure is logged with the sandbox.
   */
  dockerLeave(endpointId: string): Promise<void>;
  /** Resolves after a pass that started after this call (table sent, listeners open or failed, routes added). */
  settle(): Promise<void>;
  /** The resolver process as it reports itself. */
  status(): Promise<ResolverStatus>;
  /**
   * `kvnet doctor`'s DNS checks (area `dns`): the resolver process answering, every listener open, and
   * on a Docker host whether dockerd sends its containers' queries to it (docker/dns-setup.ts).
   */
  readonly doctorCheck: DoctorCheck;
  /** Uninstall: the resolver process exits and removes the addresses it added; the face stops. */
  uninstall(): Promise<void>;
}

/** What tests (and a runtime embedding the agent) may set instead of the defaults. */
export interface NamesFaceOptions {
  /** How to start the resolver process; default {@link defaultResolverCommand}, through `systemd-run` with `--dns-resolver-unit`. */
  readonly resolverCommand?: readonly string[];
}

/** The command that starts the resolver process for this agent's config. */
export function resolverCommandFor(unit: string | undefined, base: readonly string[] = defaultResolverCommand()): string[] {
  if (!unit) return [...base];
  // A transient unit of its own: outside the agent's cgroup, so `systemctl restart kvnet` (KillMode=mixed)
  // leaves it running; --collect removes the unit once it has exited, even after a failure.
  return ['systemd-run', `--unit=${unit}`, '--collect', '--quiet', '--property=Description=kvnet DNS resolver', ...base];
}

/** Starts the names face; rejects (InvalidConfigError, ResolverUnavailableError) when the resolver cannot be set up. */
export async function startNamesFace(ctx: AgentContext, options: NamesFaceOptions = {}): Promise<NamesFace> {
  const { config, node } = ctx;
  const logger = ctx.logger.child({ component: 'names' });
  const address = resolverAddressOf(config) ?? DEFAULT_RESOLVER_ADDRESS;
  const socketPath = config.dnsSocket ?? resolverSocketFor(config.socketPath);
  const docker = config.dockerPlugin !== undefined && config.dockerPlugin !== 'off';
  const namesCtx: NamesContext = {
    logger,
    socketPath,
    address,
    upstreams: config.dnsUpstreams ?? [],
    // daemon.json's `dns` reaches every container of the host, also those on no kvnet network: they
    // arrive in the host namespace by their default route.
    hostListener: docker,
    resolverCommand: options.resolverCommand ?? resolverCommandFor(config.dnsResolverUnit),
    resolverLog: socketPath.replace(/\.sock$/, '') + '.log',
  };
  const names: Names = await startNames(namesCtx);
  const sandboxes = new DockerSandboxes(config.stateDir, (err) => logger.warn({ err: err.message }, 'cannot read the Docker sandbox file; starting without it'));
  const netnsOf = (nid: string): string => `${NETNS_DIR}/${overlayNetnsName(config.namePrefix, nid)}`;

  /** What the resolver holds: the table's shape and the endpoint maps its records came from. */
  let sent: { shapeKey: string; records: SentRecords } | undefined;
  /**
   * Something other than remote endpoints may have changed since the last pass (a network record, a
   * local endpoint, a Docker sandbox, a resolver restart, a retry): the next pass works out the table's
   * shape and the sandboxes' routes again. Clear: only the records can differ, and a pass is just the patch.
   */
  let shapeDirty = true;
  /** Standalone sandbox path → `<holder eid> <ifname>` whose route is in place. */
  const routes = new Map<string, string>();
  let stopped = false;
  let running: Promise<void> | undefined;
  let retryTimer: NodeJS.Timeout | undefined;

  const localEndpoints = (view: ClusterView): EndpointRecord[] => endpointsOfNode(view, node.name);

  /**
   * Sends the resolver the records that changed since `sent` (O(changes); nothing when none did).
   * False when it refused the patch (`sent` is then cleared): the caller sends the whole table.
   */
  async function sendPatch(view: ClusterView, held: NonNullable<typeof sent>): Promise<boolean> {
    const patch = recordPatch(held.records, view);
    if (patch.networks.length === 0) return true;
    try {
      await names.patch(patch);
      sent = { shapeKey: held.shapeKey, records: sentRecords(view, held.records.keys()) };
      return true;
    } catch (err) {
      logger.debug({ err: (err as Error).message }, 'resolver refused a patch; sending the whole table');
      sent = undefined;
      return false;
    }
  }

  async function pass(): Promise<void> {
    const view = ctx.cluster.view();
    // Only remote endpoints changed since the last pass (a peers-only reconcile): same networks,
    // sandboxes and routes. The patch alone — also nothing at all for a network that no local sandbox
    // uses, where working the shape out again cost more than the event itself.
    if (!shapeDirty && sent && (await sendPatch(view, sent))) return;
    shapeDirty = false;
    const local = localEndpoints(view);
    const ids = new Set(local.map((e) => e.id));
    // A Docker endpoint deleted without a Leave (dockerd crashed) is forgotten; its sandbox is normally
    // gone with it, but a surviving sibling gets the route.
    for (const r of sandboxes.prune((eid) => ids.has(eid))) if (r.nextHolder) await moveDockerRoute(view, r.sandbox, r.nextHolder);
    const shape = tableShape(view, localSandboxes(view, node.name, (eid) => sandboxes.sandboxOf(eid)), node.name);
    const listeners = listenersFor(shape, netnsOf);
    const shapeKey = JSON.stringify([shape, listeners]);
    let failed = false;
    // Same networks, sandboxes and listeners as the table the resolver holds: send only the records
    // that changed (O(changes)); otherwise, or when the patch is refused, the whole table.
    const whole = !sent || shapeKey !== sent.shapeKey || !(await sendPatch(view, sent));
    if (whole) {
      const table = tableOfShape(view, shape);
      sent = undefined;
      try {
        await names.update(table, listeners);
        sent = { shapeKey, records: sentRecords(view, shape.networks.map((n) => n.id)) };
      } catch (err) {
        failed = true;
        logger.warn({ err: (err as Error).message }, 'cannot update the kvnet resolver; names answer from its last table meanwhile');
      }
    }
    if (!(await standaloneRoutes(local))) failed = true;
    if (failed) scheduleRetry();
  }

  /** The route in every standalone sandbox, through its route holder's interface; false when one could not be added. */
  async function standaloneRoutes(local: readonly EndpointRecord[]): Promise<boolean> {
    const bySandbox = new Map<string, EndpointRecord[]>();
    for (const e of local) {
      if (!e.netns) continue;
      const list = bySandbox.get(e.netns) ?? [];
      list.push(e);
      bySandbox.set(e.netns, list);
    }
    for (const key of [...routes.keys()]) if (!bySandbox.has(key)) routes.delete(key);
    let ok = true;
    for (const [netns, eps] of bySandbox) {
      const holder = eps.find((e) => e.id === routeHolder(eps))!;
      const ifname = holder.ifname ?? 'eth0';
      const want = `${holder.id} ${ifname}`;
      if (routes.get(netns) === want) continue;
      // A sandbox that is gone (deleted without a disconnect) is the data plane's to report; nothing to route.
      if (!existsSync(netns)) continue;
      try {
        await ensureSandboxRoute(netns, ifname, address);
        routes.set(netns, want);
      } catch (err) {
        ok = false;
        logger.warn({ netns, ifname, eid: holder.id, err: (err as Error).message }, 'cannot add the route to the resolver address in a sandbox; will retry');
      }
    }
    return ok;
  }

  async function moveDockerRoute(view: ClusterView, sandbox: string, holder: string): Promise<void> {
    const ep = localEndpoints(view).find((e) => e.id === holder);
    if (!ep) return;
    try {
      // dockerd's pid only matters when its SandboxKeys are not visible here (its own mount namespace).
      const dockerd = config.dockerSocket && config.dockerSocket !== 'off' ? findDockerd(config.dockerSocket)?.pid : undefined;
      const ifname = await ensureSandboxRouteByMac(sandbox, ep.mac, address, dockerd);
      logger.info({ sandbox, eid: holder, ifname }, 'resolver route moved to the next kvnet interface of the container');
    } catch (err) {
      logger.warn({ sandbox, eid: holder, err: (err as Error).message }, 'cannot move the resolver route to the next kvnet interface of the container; its queries take the default route to the host listener, which forwards but knows no kvnet names');
    }
  }

  function scheduleRetry(): void {
    if (stopped || retryTimer) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void sync();
    }, NAMES_RETRY_MS);
  }

  let requested = 0;
  let started = 0;
  let waiters: Array<{ gen: number; resolve: () => void }> = [];

  /**
   * Resolves after a pass that started after this call (passes never overlap; requests meanwhile share
   * the next one). `peersOnly`: the caller knows only remote endpoints changed (the shape stays clean).
   */
  function sync(peersOnly = false): Promise<void> {
    if (stopped) return Promise.resolve();
    if (!peersOnly) shapeDirty = true;
    const gen = ++requested;
    const done = new Promise<void>((resolve) => waiters.push({ gen, resolve }));
    kick();
    return done;
  }

  function kick(): void {
    if (running) return;
    running = (async () => {
      while (started < requested && !stopped) {
        const gen = requested;
        started = gen;
        try {
          await pass();
        } catch (err) {
          logger.warn({ err }, 'names pass failed; will retry');
          scheduleRetry();
        }
        const ready = waiters.filter((w) => w.gen <= gen);
        waiters = waiters.filter((w) => w.gen > gen);
        for (const w of ready) w.resolve();
      }
    })().finally(() => {
      running = undefined;
      if (started < requested && !stopped) kick();
    });
  }

  function release(): void {
    for (const w of waiters.splice(0)) w.resolve();
  }

  const peersPasses = new PassThrottle(NAMES_PEERS_INTERVAL_MS, () => void sync(true));
  // A resolver reconnected to (restarted, or the feed socket dropped) gets the whole table.
  names.onReconnect(() => {
    sent = undefined;
    void sync();
  });
  ctx.networks.onPlumbed(() => sync());
  // The first table before "agent ready", bounded like a plumb hook: a resolver slow to open many
  // listeners finishes them in the background.
  const first = new AbortController();
  await Promise.race([sync(), sleep(PLUMB_HOOK_BUDGET_MS, first.signal).catch(() => undefined)]);
  first.abort();
  logger.info({ address, socket: socketPath, resolver: names.resolverPid, startedResolver: names.startedResolver, hostListener: docker }, 'names face ready');

  const doctorCheck: DoctorCheck = async (signal) => {
    const out: DoctorFinding[] = [];
    try {
      const st = await names.status();
      const view = ctx.cluster.view();
      const failed = st.listeners.filter((l) => l.state === 'failed');
      for (const l of failed) {
        const net = l.network ? (view.networks.get(l.network)?.name ?? l.network.slice(0, 12)) : undefined;
        out.push({ area: 'dns', status: 'fail', summary: `DNS listener ${l.netns === 'host' ? 'in the host namespace' : `in ${l.netns}`} does not listen: ${l.error ?? 'failed'}`, fix: `containers${net ? ` on ${net}` : ''} get no answers from ${address} here; the resolver retries it (its log: ${namesCtx.resolverLog})`, ...(net ? { network: net } : {}) });
      }
      const c = st.counters;
      out.push({ area: 'dns', status: 'ok', summary: `kvnet resolver (pid ${st.pid}) answers at ${address} with ${st.listeners.length - failed.length} of ${st.listeners.length} listeners; ${c.answered ?? 0} names answered, ${c.forwarded ?? 0} forwarded, ${c.refused ?? 0} refused since ${st.startedAt}` });
    } catch (err) {
      out.push({ area: 'dns', status: 'fail', summary: `the kvnet resolver on ${socketPath} does not answer: ${(err as Error).message}`, fix: `containers get no names across hosts; the agent starts another (see ${namesCtx.resolverLog})` });
    }
    if (docker && config.dockerSocket !== 'off') {
      const findings = assessDockerDns(await readDockerDnsFacts(new DockerEngine(config.dockerSocket), signal), address);
      for (const f of findings) out.push({ area: 'dns', status: f.level === 'error' ? 'fail' : f.level === 'warn' ? 'warn' : 'skip', summary: f.message });
      if (findings.length === 0) out.push({ area: 'dns', status: 'ok', summary: `dockerd sends its containers' DNS queries to ${address}` });
    }
    return out;
  };

  return {
    address,
    doctorCheck,
    afterReconcile(_view, info): void {
      if (info?.peersOnly) peersPasses.request();
      else void sync();
    },
    dockerJoin(endpointId, sandboxKey) {
      const route = sandboxes.join(endpointId, sandboxKey);
      void sync(); // the endpoint's names now come with its sandbox's other networks
      return route ? joinStaticRoutes(address).map((r) => ({ ...r, NextHop: '' })) : [];
    },
    async dockerLeave(endpointId) {
      const r = sandboxes.leave(endpointId);
      if (r?.nextHolder) await moveDockerRoute(ctx.cluster.view(), r.sandbox, r.nextHolder);
      void sync();
    },
    settle: () => sync(),
    status: () => names.status(),
    async uninstall() {
      stopped = true;
      peersPasses.stop();
      clearTimeout(retryTimer);
      release();
      await names.shutdown({ cleanup: true });
    },
    async stop() {
      // A pass in flight gets its update rejected by the client's stop; nothing waits for it.
      stopped = true;
      peersPasses.stop();
      clearTimeout(retryTimer);
      release();
      await names.stop();
    },
  };
}
