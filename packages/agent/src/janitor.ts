/**
 * Removes what a record deleted by hand (or a crash between two writes) leaves behind, so names and
 * addresses never stay blocked (libnetwork's "Address already in use" after deleting an endpoint key
 * by hand, moby#27398):
 *
 * - an `epnames/<nid>/<name>` key whose endpoint record does not exist: deleted at once (names and
 *   records are created and deleted in one transaction, so no operation in flight can own it);
 * - an IPAM allocation whose owner is not an endpoint of the network: released when it is still
 *   orphaned on the next run ({@link JANITOR_INTERVAL_MS} later), because `connect` allocates the
 *   address a moment before it writes the endpoint.
 *
 * - a tombstone `reaped/<node>/<eid>` (or a restart marker `restarting/<node>`) older than
 *   {@link TOMBSTONE_RETENTION_MS} whose node is not live: the node is not coming back for its
 *   containers (if it does, it removes their leftovers).
 *
 * One live agent runs it (the one `hashring` maps {@link JANITOR_RING_KEY} to).
 */

import type { Logger } from 'pino';
import type { Ipam } from '@kvnet/ipam';
import type { KVStore } from '@kvnet/store';
import type { ClusterView } from './cluster-view.ts';
import { decodeRecord, decodeText, EPNAMES, ID_PATTERN, keys, networkPools, REAPED, RESTARTING } from './layout.ts';
import type { AgentMetrics } from './metrics.ts';
import { anchorTombstoneWatches } from './cluster-settings.ts';
import { chooseReaper } from './reaper.ts';

export const JANITOR_INTERVAL_MS = 60_000;
export const JANITOR_RING_KEY = 'kvnet:janitor';
export const TOMBSTONE_RETENTION_MS = 60 * 60_000;

export interface JanitorResult {
  readonly names: number;
  readonly addresses: number;
  readonly tombstones: number;
}

export class Janitor {
  /** Orphaned allocations seen on the previous run: `poolId address owner`. */
  private suspects = new Set<string>();

  constructor(private readonly ctx: { store: KVStore; ipam: Ipam; logger: Logger }) {}

  /**
   * `unfollowed`: networks whose endpoints `view` does not hold (the agent follows only its own,
   * endpoint-mirrors.ts); their endpoint ids are listed from the store, once per network and run.
   */
  async run(view: ClusterView, now = Date.now(), unfollowed: readonly string[] = []): Promise<JanitorResult> {
    const { store, ipam, logger } = this.ctx;
    const notInView = new Set(unfollowed);
    const listed = new Map<string, ReadonlySet<string>>();
    /** The endpoint ids of network `nid` as far as the view or one listing knows (a hint: the store is read again before anything is removed). */
    const endpointIds = async (nid: string): Promise<{ has(eid: string): boolean } | undefined> => {
      if (!notInView.has(nid)) return view.endpoints.get(nid);
      let ids = listed.get(nid);
      if (!ids) {
        ids = new Set((await store.list(keys.endpointsOf(nid))).entries.map((e) => e.key.slice(e.key.lastIndexOf('/') + 1)));
        listed.set(nid, ids);
      }
      return ids;
    };
    let names = 0;
    let addresses = 0;
    let tombstones = 0;

    // the tombstone watches' anchor (cluster-settings.ts), in case it was deleted with the tombstones
    if (await anchorTombstoneWatches(store, 'janitor')) logger.info({ key: keys.reapedAnchor() }, 'wrote the anchor of the tombstone watches again');

    for (const entry of (await store.list(REAPED)).entries) {
      const node = entry.key.split('/')[1] ?? '';
      if (view.nodes.has(node)) continue;
      let at = 0;
      try {
        at = Date.parse(decodeRecord<{ reapedAt?: string }>(entry.value, entry.key).reapedAt ?? '') || 0;
      } catch {
        at = 0;
      }
      if (now - at < TOMBSTONE_RETENTION_MS) continue;
      if ((await store.deleteIf(entry.key, entry.revision)).ok) tombstones++;
    }
    for (const entry of (await store.list(RESTARTING)).entries) {
      const node = entry.key.split('/')[1] ?? '';
      if (view.nodes.has(node)) continue;
      let until = 0;
      try {
        until = Date.parse(decodeRecord<{ until?: string }>(entry.value, entry.key).until ?? '') || 0;
      } catch {
        until = 0;
      }
      if (now - until >= TOMBSTONE_RETENTION_MS && (await store.deleteIf(entry.key, entry.revision)).ok) tombstones++;
    }
    if (tombstones) logger.info({ tombstones }, 'removed old tombstones and restart markers of nodes that did not come back');

    for (const entry of (await store.list(EPNAMES)).entries) {
      const [, nid, name] = entry.key.split('/');
      const eid = decodeText(entry.value);
      if (!nid || (await endpointIds(nid))?.has(eid)) continue;
      if (ID_PATTERN.test(eid) && (await store.get(keys.endpoint(nid, eid)))) continue;
      const r = await store.deleteIf(entry.key, entry.revision);
      if (r.ok) {
        names++;
        logger.info({ nid, eid, endpoint: name }, 'removed an endpoint name whose endpoint record is gone');
      }
    }

    const next = new Set<string>();
    // every pool of every network: IPv4 and IPv6 addresses alike
    for (const net of view.networks.values()) {
      for (const { poolId } of networkPools(net)) {
        let allocations;
        try {
          allocations = await ipam.listAllocations(poolId);
        } catch (err) {
          if ((err as { kind?: string }).kind === 'not-found') continue;
          throw err;
        }
        const endpoints = await endpointIds(net.id);
        for (const a of allocations) {
          if (endpoints?.has(a.owner)) continue;
          const suspect = `${poolId} ${a.address} ${a.owner}`;
          if (!this.suspects.has(suspect)) {
            next.add(suspect);
            continue;
          }
          if (ID_PATTERN.test(a.owner) && (await store.get(keys.endpoint(net.id, a.owner)))) continue;
          if (await ipam.releaseAddress(poolId, a.address, a.owner)) {
            addresses++;
            logger.info({ nid: net.id, network: net.name, address: a.address, owner: a.owner }, 'released an address whose endpoint record is gone');
          }
        }
      }
    }
    this.suspects = next;
    return { names, addresses, tombstones };
  }
}

export interface JanitorLoopOptions {
  readonly janitor: Janitor;
  /** This node's name: the loop runs the janitor only when the ring picks this node. */
  readonly self: string;
  readonly view: () => ClusterView;
  /** Networks whose endpoints the view does not hold (see {@link Janitor.run}). */
  readonly unfollowed?: () => string[];
  readonly storeHealthy: () => boolean;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
}

/** Runs the janitor every {@link JANITOR_INTERVAL_MS} on the one live agent the ring picks; returns the stop function. */
export function startJanitorLoop(opts: JanitorLoopOptions): () => void {
  let running = false;
  const tick = async (): Promise<void> => {
    if (running || !opts.storeHealthy()) return;
    const view = opts.view();
    if (chooseReaper(view.nodes.keys(), JANITOR_RING_KEY) !== opts.self) return;
    running = true;
    try {
      const r = await opts.janitor.run(view, Date.now(), opts.unfollowed?.() ?? []);
      if (r.names) opts.metrics.orphansRemoved.inc({ kind: 'name' }, r.names);
      if (r.addresses) opts.metrics.orphansRemoved.inc({ kind: 'address' }, r.addresses);
      if (r.tombstones) opts.metrics.orphansRemoved.inc({ kind: 'tombstone' }, r.tombstones);
    } catch (err) {
      opts.logger.warn({ err }, 'janitor run failed; will try again');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), JANITOR_INTERVAL_MS);
  return () => clearInterval(timer);
}
