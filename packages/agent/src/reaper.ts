/**
 * Dead-node reaping, and its reverse. libnetwork never cleans up after a host that dies; kvnet does:
 * when a node's record has been gone for a grace period, exactly one live agent — the one `hashring`
 * maps the dead node's name to, over the live node names — deletes the dead node's endpoints (and
 * their name keys), leaves a tombstone under `reaped/<node>/<eid>` and releases the addresses. Every
 * agent re-evaluates on each membership change, so if the chosen reaper dies too another one takes
 * over. A node that comes back restores what was reaped from it, from its tombstones.
 *
 * The selection and the timing are pure ({@link chooseReaper}, {@link DeadNodeTracker}); the store
 * work is {@link reapNode} and {@link restoreReaped}; {@link Reaper} runs both for the agent.
 */

import { statSync } from 'node:fs';
import HashRing from 'hashring';
import type { Logger } from 'pino';
import type { Ipam } from '@kvnet/ipam';
import type { KVEntry, KVStore } from '@kvnet/store';
import { endpointOwners, endpointsOfNode, type ClusterView } from './cluster-view.ts';
import { InvalidInputError, NodeAliveError, NotFoundError } from './errors.ts';
import { decodeRecord, endpointAddresses, ENDPOINTS, keys, networkPool, type EndpointRecord, type NetworkRecord, type NodeRecord, type RestartMarker, type VtepClaim } from './layout.ts';
import type { AgentMetrics } from './metrics.ts';
import { listEndpointRecords, Records } from './records.ts';

/**
 * Wait after a node's record is gone before its endpoints are reaped: covers an agent restart that
 * took a little longer than its lease's remaining TTL.
 */
export const REAP_GRACE_MS = 2_000;

/**
 * Which live node reaps `deadNode`. Deterministic for a given set of live names (order does not
 * matter), so every agent that sees the same membership picks the same reaper.
 */
export function chooseReaper(liveNodes: Iterable<string>, deadNode: string): string | undefined {
  const names = [...new Set(liveNodes)].sort();
  if (names.length === 0) return undefined;
  if (names.length === 1) return names[0];
  return new HashRing(names).get(deadNode);
}

/**
 * Remembers since when each endpoint owner has had no live node record, and how long to wait. The
 * grace period runs from the moment this agent first saw the owner missing; after a store outage
 * this agent observed itself, nothing is due before {@link noteOutageEnded}'s quiet period ends
 * (everyone's leases may have lapsed during the outage; their agents need time to re-register).
 */
export class DeadNodeTracker {
  private readonly since = new Map<string, number>();
  private readonly postponed = new Map<string, number>();
  private quietUntil = 0;

  constructor(private readonly graceMs: number) {}

  /** Records the current membership. `owners` are the node names that own endpoints in the store. */
  update(live: ReadonlySet<string>, owners: Iterable<string>, now: number): void {
    const missing = new Set<string>();
    for (const owner of owners) if (!live.has(owner)) missing.add(owner);
    for (const name of [...this.since.keys()]) {
      if (!missing.has(name)) {
        this.since.delete(name);
        this.postponed.delete(name);
      }
    }
    for (const name of missing) if (!this.since.has(name)) this.since.set(name, now);
  }

  noteOutageEnded(now: number, quietMs: number): void {
    this.quietUntil = Math.max(this.quietUntil, now + quietMs);
  }

  /** Not before `until` for this owner (it announced a restart). */
  postpone(name: string, until: number): void {
    if (this.since.has(name)) this.postponed.set(name, until);
  }

  /** Forgets `name` (it has nothing left to reap). */
  forget(name: string): void {
    this.since.delete(name);
    this.postponed.delete(name);
  }

  /** Owners whose grace period is over, sorted. */
  due(now: number): string[] {
    if (now < this.quietUntil) return [];
    return [...this.since.entries()]
      .filter(([n, t]) => now - t >= this.graceMs && now >= (this.postponed.get(n) ?? 0))
      .map(([n]) => n)
      .sort();
  }

  /** When the next owner becomes due (ms since epoch; with `after`, the next one later than it), or undefined when nobody is pending. */
  nextDueAt(after?: number): number | undefined {
    let next: number | undefined;
    for (const [n, t] of this.since.entries()) {
      const at = Math.max(t + this.graceMs, this.quietUntil, this.postponed.get(n) ?? 0);
      if (after !== undefined && at <= after) continue;
      if (next === undefined || at < next) next = at;
    }
    return next;
  }

  /** Owners currently considered missing. */
  missing(): string[] {
    return [...this.since.keys()].sort();
  }
}

export interface ReapContext {
  readonly store: KVStore;
  readonly ipam: Ipam;
  readonly logger: Logger;
  /** This node's name (the reaper), recorded in the log. */
  readonly self: string;
}

export type ReapResult = { readonly reaped: number } | { readonly postponedUntil: number };

/**
 * Deletes the endpoints of `deadNode`, each in one transaction with its name key and a tombstone,
 * then releases its address. Re-checks first that the node is still absent in the store (our view
 * may be behind) and has not announced a restart (`restarting/<node>` with a future `until`: then
 * nothing is done and the time is returned). Safe to run twice: a second run finds nothing
 * (conditional deletes).
 */
export async function reapNode(
  ctx: ReapContext,
  deadNode: string,
  endpoints: readonly EndpointRecord[],
  networks: ReadonlyMap<string, NetworkRecord>,
  now = Date.now(),
): Promise<ReapResult> {
  const { store, ipam, logger } = ctx;
  if (await store.get(keys.node(deadNode))) {
    logger.info({ deadNode }, 'node is live again; not reaping');
    return { reaped: 0 };
  }
  const marker = await store.get(keys.restarting(deadNode));
  if (marker) {
    let until = 0;
    try {
      until = Date.parse(decodeRecord<RestartMarker>(marker.value, marker.key).until) || 0;
    } catch {
      until = 0;
    }
    if (until > now) return { postponedUntil: until };
    await store.deleteIf(marker.key, marker.revision).catch(() => undefined);
  }
  const records = new Records(store, ipam, logger);
  let reaped = 0;
  for (const ep of endpoints) {
    const log = logger.child({ deadNode, nid: ep.network, eid: ep.id });
    const current = await store.get(keys.endpoint(ep.network, ep.id));
    if (!current) continue;
    const tombstone = { node: deadNode, reapedBy: ctx.self, reapedAt: new Date().toISOString() };
    const net = networks.get(ep.network);
    if (!(await records.deleteEndpoint(ep, { revision: current.revision, tombstone, ...(net ? { poolId: net.poolId, poolId6: net.poolId6 } : {}) }))) {
      log.info('endpoint changed while reaping; left for the next round');
      continue;
    }
    reaped++;
    log.info({ address: ep.address, address6: ep.address6, name: ep.name }, 'reaped endpoint of dead node');
  }
  return { reaped };
}

/** What {@link removeNode} did. */
export interface NodeRemoval {
  /** Endpoints of the node deleted (their names and addresses are free again). */
  readonly endpoints: number;
  /** The node still had a live record (only with `force`). */
  readonly wasLive: boolean;
  /** Tombstones (`reaped/<node>/…`) and restart marker removed. */
  readonly tombstones: number;
}

/**
 * `kvnet node rm`: a node that will not come back. Deletes its endpoints at once (no tombstones: it
 * is not expected to restore them), its tombstones and its restart marker, so its names and
 * addresses are free now instead of after the reaper's wait or the janitor's hour. Refuses a node
 * whose record is live unless `force` (then its node record and VTEP claim go too: its agent, if it
 * still runs, is out of the cluster until it restarts), this agent's own node, and a name nothing in
 * the store knows.
 */
export async function removeNode(ctx: ReapContext, node: string, opts: { readonly force: boolean; readonly networks: ReadonlyMap<string, NetworkRecord> }): Promise<NodeRemoval> {
  const { store, ipam, logger } = ctx;
  if (node === ctx.self) throw new InvalidInputError(`cannot remove node ${node} through its own agent: stop this agent, then run kvnet node rm ${node} on another host`);
  const live = await store.get(keys.node(node));
  if (live && !opts.force) {
    let detail = '';
    try {
      const rec = decodeRecord<NodeRecord>(live.value, live.key);
      detail = ` (advertise ${rec.advertise}, agent started ${rec.startedAt})`;
    } catch {
      // an unreadable record is still a live one
    }
    throw new NodeAliveError(`node ${node} is alive${detail}: its agent keeps its record; stop that agent first, or pass --force to remove it anyway`);
  }
  const log = logger.child({ removedNode: node });
  const records = new Records(store, ipam, logger);
  const mine: Array<{ ep: EndpointRecord; revision: string }> = [];
  for (const entry of (await store.list(ENDPOINTS)).entries) {
    try {
      const ep = decodeRecord<EndpointRecord>(entry.value, entry.key);
      const [, nid, eid] = entry.key.split('/');
      if (ep.node === node && nid && eid) mine.push({ ep: { ...ep, id: eid, network: nid }, revision: entry.revision });
    } catch {
      // unreadable records are the janitor's
    }
  }
  const tombstones = (await store.list(keys.reapedOf(node))).entries;
  const marker = await store.get(keys.restarting(node));
  if (!live && mine.length === 0 && tombstones.length === 0 && !marker) throw new NotFoundError(`no such node: ${node} (no record, endpoints, tombstones or restart marker in the store)`);
  if (live) {
    let vtep: string | undefined;
    try {
      vtep = decodeRecord<NodeRecord>(live.value, live.key).advertise;
    } catch {
      vtep = undefined;
    }
    await store.deleteIf(live.key, live.revision);
    if (vtep) {
      const claim = await store.get(keys.vtep(vtep));
      let holder: string | undefined;
      try {
        holder = claim ? decodeRecord<VtepClaim>(claim.value, claim.key).node : undefined;
      } catch {
        holder = undefined;
      }
      if (claim && holder === node) await store.deleteIf(claim.key, claim.revision);
    }
    log.warn('removed the live record of a node (node rm --force)');
  }
  let endpoints = 0;
  for (const { ep, revision } of mine) {
    const net = opts.networks.get(ep.network);
    if (await records.deleteEndpoint(ep, { revision, ...(net ? { poolId: net.poolId, poolId6: net.poolId6 } : {}) })) {
      endpoints++;
      log.info({ nid: ep.network, eid: ep.id, endpoint: ep.name, address: ep.address }, 'removed endpoint of a removed node');
    }
  }
  for (const t of tombstones) await store.deleteIf(t.key, t.revision);
  if (marker) await store.deleteIf(marker.key, marker.revision);
  log.info({ endpoints, tombstones: tombstones.length }, 'node removed');
  return { endpoints, wasLive: live !== undefined, tombstones: tombstones.length + (marker ? 1 : 0) };
}

export interface RestoreContext {
  readonly store: KVStore;
  readonly ipam: Ipam;
  readonly logger: Logger;
  /** This node's advertise address (the restored endpoints' `vtep`). */
  readonly vtep: string;
  /**
   * True when a runtime (Docker) sweeps its own stale endpoints on this host: a runtime endpoint has no
   * netns path to check, so it is restored and left to that sweep if its container is gone.
   */
  readonly runtimeSweeps: boolean;
  /** Resolves when this agent's view shows the key (used at start, before the first reconcile). */
  readonly waitForView?: (key: string) => Promise<unknown>;
}

/**
 * Brings back this node's endpoints that a reaper removed while the node was considered dead (the
 * tombstones under `reaped/<node>/`), when their network and sandbox still exist: same id, name and
 * address (allocated again first). If the name or address was taken meanwhile, or the network or the
 * sandbox is gone, the tombstone is dropped (and the next reconcile removes the interface).
 */
export async function restoreReaped(ctx: RestoreContext, tombstones: readonly KVEntry[]): Promise<void> {
  const { store, ipam, logger } = ctx;
  const records = new Records(store, ipam, logger);
  for (const entry of tombstones) {
    let ep: EndpointRecord & { reapedBy?: string; reapedAt?: string };
    try {
      ep = decodeRecord<EndpointRecord>(entry.value, entry.key);
    } catch {
      await store.delete(entry.key).catch(() => undefined);
      continue;
    }
    const log = logger.child({ nid: ep.network, eid: ep.id, endpoint: ep.name });
    const netEntry = await store.get(keys.network(ep.network));
    let alive = ep.handoff !== undefined && ep.netns === undefined && ctx.runtimeSweeps;
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
    const net = decodeRecord<NetworkRecord>(netEntry.value, netEntry.key);
    // the same addresses again, in each family's pool (records.releaseAddresses undoes a half-done pair)
    const held = endpointAddresses(ep);
    try {
      for (const [family, address] of [[4, held.v4], [6, held.v6]] as const) {
        const pool = address ? networkPool(net, family) : undefined;
        if (pool && address) await ipam.allocateAddress(pool.poolId, { owner: ep.id, address });
      }
    } catch (err) {
      log.error({ err, address: ep.address, address6: ep.address6 }, 'cannot restore a reaped endpoint: its address is taken; it will be removed here');
      await records.releaseAddresses(net, ep);
      await store.deleteIf(entry.key, entry.revision).catch(() => undefined);
      continue;
    }
    const { reapedBy: _by, reapedAt: _at, ...record } = ep;
    if (await records.restoreEndpoint(netEntry, { ...record, vtep: ctx.vtep }, entry)) {
      log.warn({ address: ep.address }, 'restored an endpoint that was reaped while this node was away');
      await ctx.waitForView?.(keys.endpoint(ep.network, ep.id));
    } else {
      log.error('cannot restore a reaped endpoint: its name or network changed; it will be removed here');
      await records.releaseAddresses(net, ep);
      await store.deleteIf(entry.key, entry.revision).catch(() => undefined);
    }
  }
}

export interface ReaperOptions extends Omit<RestoreContext, 'waitForView'> {
  /** This node's name. */
  readonly self: string;
  readonly metrics: AgentMetrics;
  /** The store answers (no reaping while it does not: the view may be stale). */
  readonly storeHealthy: () => boolean;
  /** This node's tombstones as the agent mirrors them. */
  readonly tombstones: () => KVEntry[];
  readonly waitForView: (key: string) => Promise<unknown>;
  /** Asks for a reconcile after `delayMs` (the reaper's timer and the end of a reaping). */
  readonly schedule: (delayMs?: number) => void;
  /**
   * The networks whose endpoints the agent does not follow (endpoint-mirrors.ts), when it follows only
   * its own: the view does not show who owns endpoints there, so a dead node's are read from the store.
   */
  readonly unfollowed?: {
    networks(): string[];
    /** Nodes that owned endpoints there when the networks were let go. */
    owners(): ReadonlySet<string>;
    /** `node` has no endpoints left there. */
    forget(node: string): void;
  };
}

/** How long a node that left is remembered as a possible owner of endpoints on networks not followed. */
export const DEPARTED_MEMORY_MS = 60 * 60_000;

/** Runs reaping and restoring for one agent: {@link check} after every reconcile, {@link restore} at start and when tombstones appear. */
export class Reaper {
  private readonly tracker = new DeadNodeTracker(REAP_GRACE_MS);
  private readonly reaping = new Set<string>();
  private restoring = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The live nodes at the last check. */
  private lastLive: ReadonlySet<string> | undefined;
  /**
   * Nodes that left since (name → when): on networks this agent does not follow they may own
   * endpoints it cannot see, so while there are such networks each is a possible owner to reap.
   */
  private readonly departed = new Map<string, number>();
  /** Owners the view (or the networks let go) shows: what {@link missing} reports. */
  private knownOwners: ReadonlySet<string> = new Set();

  constructor(private readonly opts: ReaperOptions) {}

  /** After an outage (or our own lease lapsed) everyone's leases may have lapsed: reap nobody for `quietMs`. */
  noteOutageEnded(now: number, quietMs: number): void {
    this.tracker.noteOutageEnded(now, quietMs);
  }

  /** Owners currently considered missing (for status). */
  missing(): string[] {
    return this.tracker.missing().filter((n) => this.knownOwners.has(n));
  }

  /** Notes who left since the last check (and who came back). */
  private noteDeparted(live: ReadonlySet<string>, now: number): void {
    if (this.lastLive) for (const n of this.lastLive) if (!live.has(n)) this.departed.set(n, now);
    for (const [n, at] of this.departed) if (live.has(n) || now - at > DEPARTED_MEMORY_MS) this.departed.delete(n);
    this.lastLive = live;
  }

  /**
   * The endpoints of `dead`: those in the view, and, when some networks are not followed, those the
   * store holds there (one listing per such network).
   */
  private async endpointsOf(view: ClusterView, dead: string): Promise<EndpointRecord[]> {
    const out = endpointsOfNode(view, dead);
    for (const nid of this.opts.unfollowed?.networks() ?? []) {
      out.push(...(await listEndpointRecords(this.opts.store, nid)).filter((ep) => ep.node === dead));
    }
    return out;
  }

  /** Notes who is missing in `view`, reaps the due nodes this agent is the reaper of, and restores tombstones. */
  check(view: ClusterView): void {
    const { self, logger, metrics } = this.opts;
    const now = Date.now();
    const live = new Set(view.nodes.keys());
    this.noteDeparted(live, now);
    const owners = new Set(endpointOwners(view));
    const partial = (this.opts.unfollowed?.networks().length ?? 0) > 0;
    if (partial) for (const n of this.opts.unfollowed!.owners()) owners.add(n);
    this.knownOwners = new Set(owners);
    if (partial) for (const n of this.departed.keys()) owners.add(n);
    this.tracker.update(live, owners, now);
    if (this.opts.storeHealthy()) {
      for (const dead of this.tracker.due(now)) {
        if (this.reaping.has(dead) || chooseReaper(live, dead) !== self) continue;
        this.reaping.add(dead);
        this.endpointsOf(view, dead)
          .then((endpoints) => {
            // a node that left with nothing to reap (possible only where some networks are not followed) is not news
            if (endpoints.length > 0) logger.warn({ deadNode: dead, endpoints: endpoints.length }, 'node is gone; reaping its endpoints unless it announced a restart');
            else logger.debug({ deadNode: dead }, 'node is gone; no endpoints of it to reap');
            return reapNode({ store: this.opts.store, ipam: this.opts.ipam, logger, self }, dead, endpoints, view.networks);
          })
          .then((r) => {
            if ('postponedUntil' in r) {
              this.tracker.postpone(dead, r.postponedUntil);
              logger.info({ deadNode: dead, until: new Date(r.postponedUntil).toISOString() }, 'node announced a restart; not reaping it before then');
            } else {
              metrics.reapedEndpoints.inc(r.reaped);
              // nothing of it is left where this agent cannot see
              this.departed.delete(dead);
              this.opts.unfollowed?.forget(dead);
            }
          })
          .catch((err) => {
            metrics.storeErrors.inc();
            logger.warn({ err, deadNode: dead }, 'reaping failed; will try again');
          })
          .finally(() => {
            this.reaping.delete(dead);
            this.opts.schedule(REAP_GRACE_MS / 4);
          });
      }
    }
    clearTimeout(this.timer);
    // owners already due are being reaped (which schedules again when done) or are another agent's to reap
    const next = this.tracker.nextDueAt(now);
    if (next !== undefined && !this.stopped) this.timer = setTimeout(() => this.opts.schedule(), Math.max(50, next - now + 10));
    if (this.opts.tombstones().length > 0) void this.restore(false);
  }

  /** Restores this node's reaped endpoints (see {@link restoreReaped}); at start it waits for each to reach the view. */
  async restore(initial: boolean): Promise<void> {
    if (this.restoring || this.stopped) return;
    this.restoring = true;
    try {
      await restoreReaped({ ...this.opts, ...(initial ? { waitForView: this.opts.waitForView } : { waitForView: undefined }) }, this.opts.tombstones());
    } catch (err) {
      this.opts.logger.warn({ err }, 'restoring reaped endpoints failed; will try again');
    } finally {
      this.restoring = false;
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
