/**
 * An etcd lease kept alive by this process. Keepalives go over a LeaseKeepAlive stream, the first
 * right after the grant and then every `ttl × LEASE_RENEW_FRACTION`; each answer proves the server
 * keeps the lease for its TTL from the moment that request was sent (a lower bound on the server's
 * own deadline). The lease is reported lost as `expired` when etcd answers that it no longer knows
 * it, or when no answer proved it alive for a whole TTL and the oldest unanswered keepalive has
 * waited `timeoutMs` (the store's bound for "no answer") — so a dead, paused or half-open server is
 * noticed within TTL + timeoutMs, while a merely slow one (a loaded machine answers a grant or a
 * keepalive in over a second) does not cost the lease. etcd3's own `Lease` waits up to 2×TTL and
 * misses half-open streams (../README.md, "Client libraries").
 *
 * Server quirk: etcd extends every lease by its TTL when a member becomes leader, including after a
 * restart, so after an outage the keys of a lease reported lost here can outlive it on the server
 * by up to one TTL; whoever re-registers rebinds them with a new lease.
 */

import { EtcdLeaseInvalidError, type ILeaseKeepAliveResponse } from 'etcd3';
import type { Logger } from 'pino';
import { withDeadline } from './deadline.ts';
import { closeStream, describeGrpcError, type EtcdRpc } from './etcd-client.ts';
import type { Lease, LeaseLostReason } from './store.ts';

/** Renew this often, as a fraction of the TTL (the Go client's choice). */
export const LEASE_RENEW_FRACTION = 1 / 3;
/** etcd's lessor looks for expired leases every 500 ms, then revokes them through raft. */
export const LEASE_EXPIRY_GRACE_MS = 1_000;
/** setTimeout's longest delay; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

type KeepAliveStream = Awaited<ReturnType<EtcdRpc['client']['leaseClient']['leaseKeepAlive']>>;

/** An etcd lease granted by this store and renewed until revoked, released, lost or closed. */
export class EtcdLease implements Lease {
  readonly ttlMs: number;
  readonly expiryGraceMs = LEASE_EXPIRY_GRACE_MS;
  readonly lost: Promise<LeaseLostReason>;
  private resolveLost!: (reason: LeaseLostReason) => void;
  private state: 'renewing' | 'stopped' | 'gone' = 'renewing';
  private lostReason: LeaseLostReason | undefined;
  private revoked = false;
  /** performance.now() until which the server keeps the lease for sure. */
  private aliveUntil: number;
  private stream: KeepAliveStream | undefined;
  /** performance.now() when the keepalive stream being opened was requested. */
  private openingSince: number | undefined;
  /** Send times of the keepalives not yet answered on the current stream, oldest first. */
  private sentAt: number[] = [];
  private readonly renewTimer: NodeJS.Timeout;
  private expiryTimer: NodeJS.Timeout | undefined;
  private readonly log: Logger | undefined;

  /**
   * @param grantSentAt performance.now() when the grant request was sent.
   * @param onGone called once when the lease is lost, revoked, released or closed.
   */
  constructor(
    private readonly rpc: EtcdRpc,
    readonly id: string,
    ttlSeconds: number,
    grantSentAt: number,
    private readonly onGone: (lease: EtcdLease) => void,
  ) {
    this.ttlMs = ttlSeconds * 1000;
    this.aliveUntil = grantSentAt + this.ttlMs;
    this.log = rpc.log?.child({ lease: id });
    this.lost = new Promise((resolve) => (this.resolveLost = resolve));
    this.renewTimer = setInterval(() => this.renew(), Math.min(this.ttlMs * LEASE_RENEW_FRACTION, MAX_TIMER_MS));
    this.renew();
    this.armExpiry(this.aliveUntil);
  }

  /** Why a key can no longer be bound to this lease, or undefined when it still can. */
  get unusable(): LeaseLostReason | undefined {
    return this.lostReason === 'released' ? undefined : this.lostReason;
  }

  /** Revokes on the server even after a local `expired` verdict, which can be early. */
  async revoke(): Promise<void> {
    if (this.revoked) return;
    this.stopRenewing();
    await this.rpc.call(`revoke lease ${this.id}`, 'write', (options) =>
      this.rpc.client.leaseClient.leaseRevoke({ ID: this.id }, options).catch((err: unknown) => {
        if (err instanceof EtcdLeaseInvalidError) return undefined; // already gone: what revoke wants
        throw err;
      }),
    );
    this.revoked = true;
    this.gone('revoked');
  }

  async release(): Promise<void> {
    this.gone('released');
  }

  /** The store is closing: stop renewing, keep the keys until the TTL runs out. */
  close(): void {
    this.gone('closed');
  }

  private renew(): void {
    if (this.state !== 'renewing') return;
    const oldest = this.sentAt[0];
    if (oldest !== undefined && performance.now() - oldest > this.rpc.timeoutMs) this.dropStream();
    if (!this.stream) {
      void this.openStream();
      return;
    }
    this.sentAt.push(performance.now());
    this.stream.write({ ID: this.id });
  }

  private async openStream(): Promise<void> {
    if (this.openingSince !== undefined) return;
    this.openingSince = performance.now();
    const opening = this.rpc.client.leaseClient.leaseKeepAlive();
    let stream: KeepAliveStream;
    try {
      stream = await withDeadline(this.rpc.url, `keep lease ${this.id} alive`, this.rpc.timeoutMs, () => opening);
    } catch (err) {
      opening.then(closeStream, () => undefined);
      this.log?.debug({ err: describeGrpcError(err) }, 'cannot open the etcd lease keepalive stream');
      return;
    } finally {
      this.openingSince = undefined;
    }
    if (this.state !== 'renewing') {
      closeStream(stream);
      return;
    }
    this.stream = stream;
    this.sentAt = [];
    stream.on('data', (res: ILeaseKeepAliveResponse) => this.onKeepAlive(stream, res));
    stream.on('error', (err: unknown) => this.onStreamGone(stream, err));
    stream.on('end', () => this.onStreamGone(stream, new Error('etcd ended the keepalive stream')));
    this.renew();
  }

  private onKeepAlive(stream: KeepAliveStream, res: ILeaseKeepAliveResponse): void {
    if (stream !== this.stream) return;
    const sent = this.sentAt.shift();
    if (sent === undefined) return;
    const ttlS = Number(res.TTL);
    if (!(ttlS > 0)) {
      this.gone('expired', 'etcd no longer knows the lease');
      return;
    }
    this.aliveUntil = Math.max(this.aliveUntil, sent + ttlS * 1000);
  }

  private onStreamGone(stream: KeepAliveStream, err: unknown): void {
    if (stream !== this.stream) return;
    this.log?.debug({ err: describeGrpcError(err) }, 'etcd lease keepalive stream broke');
    this.dropStream();
  }

  /** Checks at `at` whether the lease must be given up; see the module comment for the rule. */
  private armExpiry(at: number): void {
    clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => {
      const now = performance.now();
      if (now < this.aliveUntil) return this.armExpiry(this.aliveUntil);
      const oldest = this.sentAt[0] ?? this.openingSince;
      if (oldest !== undefined && now < oldest + this.rpc.timeoutMs) return this.armExpiry(oldest + this.rpc.timeoutMs);
      this.gone('expired', `no keepalive was answered for ${Math.round(now - this.aliveUntil + this.ttlMs)} ms (TTL ${this.ttlMs} ms)`);
    }, Math.min(Math.max(0, at - performance.now()), MAX_TIMER_MS));
  }

  private dropStream(): void {
    const stream = this.stream;
    this.stream = undefined;
    this.sentAt = [];
    closeStream(stream);
  }

  private stopRenewing(): void {
    if (this.state === 'renewing') this.state = 'stopped';
    clearInterval(this.renewTimer);
    this.dropStream();
  }

  private gone(reason: LeaseLostReason, detail?: string): void {
    if (this.state === 'gone') return;
    this.stopRenewing();
    this.state = 'gone';
    this.lostReason = reason;
    clearTimeout(this.expiryTimer);
    if (reason === 'expired') this.log?.warn({ detail }, 'etcd lease lost');
    else this.log?.debug({ reason }, 'etcd lease ended');
    this.resolveLost(reason);
    this.onGone(this);
  }
}
