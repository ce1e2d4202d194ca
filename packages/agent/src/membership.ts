/**
 * Node membership: `nodes/<name>` and `vteps/<advertise ip>`, both bound to this agent's lease.
 * Registration is one transaction over both keys, conditional on what was read, so two agents can
 * never both hold one name or one advertise address. A record left by this node's previous
 * incarnation (same persistent node id; its lease was released, not revoked) is taken over; one held
 * by another node id is a {@link NodeConflictError} naming both nodes.
 *
 * When the lease is lost (it expired during a long store outage), the agent keeps trying to register
 * again with a fresh lease, with backoff, until it is stopped.
 */

import type { Logger } from 'pino';
import { backoffDelay, hasCode, sleep, type KVEntry, type KVStore, type Lease, type PutCondition } from '@kvnet/store';
import { NodeConflictError } from './errors.ts';
import { decodeRecord, encodeRecord, keys, type NodeRecord, type RestartMarker, type VtepClaim } from './layout.ts';

export const REGISTER_MAX_ATTEMPTS = 5;
/**
 * Attempts of the first registration when the store does not answer (a first connection to a
 * loaded server can take longer than one call's timeout); then the agent gives up and exits.
 */
export const START_ATTEMPTS = 2;
const START_RETRY_DELAY_MS = 500;
export const REREGISTER_BASE_MS = 200;
export const REREGISTER_CAP_MS = 5_000;
/**
 * A cleanly stopped agent leaves `restarting/<node>` saying "do not reap me before now + this": its
 * node record lapses after the TTL, but a restart (or upgrade) slower than that must not cost its
 * containers their peers. A node that does not come back is reaped after this.
 */
export const RESTART_PROTECTION_MS = 30_000;
/** How long a stopping agent tries to write its restart marker (the store may be down). */
const RESTART_MARK_TIMEOUT_MS = 1_000;

export interface MembershipOptions {
  readonly store: KVStore;
  readonly logger: Logger;
  readonly record: NodeRecord;
  readonly ttlS: number;
  /** Called after every successful (re-)registration, with the lease now in use. */
  readonly onRegistered?: (lease: Lease, again: boolean) => void;
}

export class Membership {
  private lease: Lease | undefined;
  private stopped = false;
  private readonly controller = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(private readonly opts: MembershipOptions) {}

  get currentLease(): Lease | undefined {
    return this.lease;
  }

  /** First registration; throws NodeConflictError or the store's error. Then keeps the membership alive. */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        this.lease = await this.register();
        break;
      } catch (err) {
        if (attempt >= START_ATTEMPTS || !hasCode(err, 'KVNET_STORE_UNAVAILABLE') || this.stopped) throw err;
        this.opts.logger.warn({ err, attempt }, 'cluster store did not answer; trying once more');
        await sleep(START_RETRY_DELAY_MS);
      }
    }
    this.opts.onRegistered?.(this.lease, false);
    this.loop = this.keepAlive();
    await this.opts.store.delete(keys.restarting(this.opts.record.name)).catch((err) => this.opts.logger.warn({ err }, 'could not remove the restart marker'));
  }

  /**
   * Writes `restarting/<node>` (best effort, bounded by {@link RESTART_MARK_TIMEOUT_MS}): see
   * {@link RESTART_PROTECTION_MS}. Call before {@link stop} when stopping cleanly.
   */
  async announceRestart(): Promise<void> {
    const { store, record, logger } = this.opts;
    const marker: RestartMarker = { node: record.name, nodeId: record.nodeId, until: new Date(Date.now() + RESTART_PROTECTION_MS).toISOString() };
    const signal = AbortSignal.timeout(RESTART_MARK_TIMEOUT_MS);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${RESTART_MARK_TIMEOUT_MS} ms`)), RESTART_MARK_TIMEOUT_MS + 100);
    });
    try {
      await Promise.race([store.put(keys.restarting(record.name), encodeRecord(marker), { signal }), deadline]);
    } catch (err) {
      logger.warn({ err }, 'could not announce the restart; the node may be reaped if it stays away longer than its TTL');
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops renewing: the lease is released (records live until the TTL runs out), never revoked. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.controller.abort();
    await this.lease?.release().catch(() => undefined);
    await this.loop;
  }

  private async keepAlive(): Promise<void> {
    const signal = this.controller.signal;
    while (!this.stopped) {
      const lease = this.lease!;
      const reason = await Promise.race([lease.lost, new Promise<'stopped'>((r) => signal.addEventListener('abort', () => r('stopped'), { once: true }))]);
      if (this.stopped || reason === 'stopped') return;
      this.opts.logger.warn({ reason, leaseId: lease.id }, 'node lease lost; registering again');
      for (let attempt = 0; !this.stopped; attempt++) {
        try {
          this.lease = await this.register();
          this.opts.logger.info({ leaseId: this.lease.id }, 'node registered again');
          this.opts.onRegistered?.(this.lease, true);
          break;
        } catch (err) {
          this.opts.logger.warn({ err, attempt }, 'registering again failed; retrying');
          try {
            await sleep(backoffDelay(attempt, REREGISTER_BASE_MS, REREGISTER_CAP_MS) + 50, signal);
          } catch {
            return;
          }
        }
      }
    }
  }

  private async register(): Promise<Lease> {
    const { store, record, ttlS } = this.opts;
    const lease = await store.grantLease(ttlS);
    try {
      for (let attempt = 0; attempt < REGISTER_MAX_ATTEMPTS; attempt++) {
        const [nodeEntry, vtepEntry] = await Promise.all([store.get(keys.node(record.name)), store.get(keys.vtep(record.advertise))]);
        const nodeCond = this.claimable(nodeEntry, 'node');
        const vtepCond = this.claimable(vtepEntry, 'vtep');
        const r = await store.txn([
          { op: 'put', key: keys.node(record.name), value: encodeRecord(record), if: nodeCond, lease },
          { op: 'put', key: keys.vtep(record.advertise), value: encodeRecord({ node: record.name, nodeId: record.nodeId } satisfies VtepClaim), if: vtepCond, lease },
        ]);
        if (r.ok) return lease;
        await sleep(backoffDelay(attempt, 20, 500));
      }
      throw new NodeConflictError(`could not register node ${record.name}: its records kept changing under concurrent writers`);
    } catch (err) {
      await lease.revoke().catch(() => undefined);
      throw err;
    }
  }

  /** The write condition for taking `entry` over, or a conflict naming the other node. */
  private claimable(entry: KVEntry | undefined, what: 'node' | 'vtep'): PutCondition {
    if (!entry) return { absent: true };
    const { record } = this.opts;
    let holder: { nodeId?: string; node?: string; name?: string; advertise?: string };
    try {
      holder = decodeRecord(entry.value, entry.key);
    } catch {
      return { revision: entry.revision }; // unreadable: take it over
    }
    if (holder.nodeId === record.nodeId) return { revision: entry.revision };
    if (what === 'node') {
      throw new NodeConflictError(
        `node name ${record.name} is already registered by another live agent (advertise ${holder.advertise ?? '?'}, node id ${holder.nodeId ?? '?'}); ` +
          `choose another --node-name, or wait until its record expires`,
      );
    }
    throw new NodeConflictError(
      `advertise address ${record.advertise} is already claimed by live node ${holder.node ?? '?'}; this node ${record.name} cannot use it too`,
    );
  }
}
