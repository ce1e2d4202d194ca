/**
 * Dead-node reaping. libnetwork never cleans up after a host that dies; kvnet does: when a node's
 * record has been gone for a grace period, exactly one live agent — the one `hashring` maps the dead
 * node's name to, over the live node names — deletes the dead node's endpoints (and their name keys),
 * leaves a tombstone under `reaped/<node>/<eid>` and releases the addresses. Every agent re-evaluates
 * on each membership change, so if the chosen reaper dies too another one takes over.
 *
 * The selection and the timing are pure ({@link chooseReaper}, {@link DeadNodeTracker}); the store
 * work is {@link reapNode}.
 */

import HashRing from 'hashring';
import type { Logger } from 'pino';
import type { Ipam } from '@kvnet/ipam';
import type { KVStore, TxnOp } from '@kvnet/store';
import { decodeRecord, decodeText, encodeRecord, keys, type EndpointRecord, type NetworkRecord, type RestartMarker } from './layout.ts';

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

  /** Owners whose grace period is over, sorted. */
  due(now: number): string[] {
    if (now < this.quietUntil) return [];
    return [...this.since.entries()]
      .filter(([n, t]) => now - t >= this.graceMs && now >= (this.postponed.get(n) ?? 0))
      .map(([n]) => n)
      .sort();
  }

  /** When the next owner becomes due (ms since epoch), or undefined when nobody is pending. */
  nextDueAt(): number | undefined {
    let next: number | undefined;
    for (const [n, t] of this.since.entries()) {
      const at = Math.max(t + this.graceMs, this.quietUntil, this.postponed.get(n) ?? 0);
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
  let reaped = 0;
  for (const ep of endpoints) {
    const log = logger.child({ deadNode, nid: ep.network, eid: ep.id });
    const key = keys.endpoint(ep.network, ep.id);
    const current = await store.get(key);
    if (!current) continue;
    const ops: TxnOp[] = [
      { op: 'delete', key, if: { revision: current.revision } },
      { op: 'put', key: keys.reaped(deadNode, ep.id), value: encodeRecord({ ...ep, reapedBy: ctx.self, reapedAt: new Date().toISOString() }) },
    ];
    const nameEntry = await store.get(keys.epname(ep.network, ep.name));
    if (nameEntry && decodeText(nameEntry.value) === ep.id) ops.push({ op: 'delete', key: nameEntry.key, if: { revision: nameEntry.revision } });
    const r = await store.txn(ops);
    if (!r.ok) {
      log.info('endpoint changed while reaping; left for the next round');
      continue;
    }
    reaped++;
    const net = networks.get(ep.network);
    if (net) {
      try {
        await ipam.releaseAddress(net.poolId, ep.address, ep.id);
      } catch (err) {
        log.warn({ err }, 'could not release the address of a reaped endpoint');
      }
    }
    log.info({ address: ep.address, name: ep.name }, 'reaped endpoint of dead node');
  }
  return { reaped };
}
