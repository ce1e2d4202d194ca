/**
 * A lease of the Consul store: a session with `Behavior: delete` (keys it holds are deleted when it
 * ends), `LockDelay: 0s` (a key of a dead session can be bound again at once) and no health checks
 * (only the TTL decides; a session tied to one server's `serfHealth` would die with that server even
 * though its owner fails over to another). Consul invalidates a session between TTL and 2×TTL after
 * the last renewal (the TTL is a lower bound; its servers arm the timer at 2×TTL), hence
 * {@link ConsulLease.expiryGraceMs} = TTL. So that a lease of T seconds ends within T like on the
 * other backends, the store asks Consul for a session of T / {@link SESSION_TTL_DIVISOR} (at least the
 * server's `session_ttl_min`, 10 s unless configured lower).
 */

import type { Logger } from 'pino';
import type { Lease, LeaseLostReason } from './store.ts';

/** A lease of T asks for a session of T / this: Consul takes up to twice a session's TTL to end it. */
export const SESSION_TTL_DIVISOR = 2;
/** Renew this fraction of the TTL after the last renewal. */
export const SESSION_RENEW_FRACTION = 1 / 3;
/** After a failed renewal (server unreachable), try again this soon, but no later than the normal interval. */
export const SESSION_RETRY_MS = 500;

/** What a lease needs from its store. */
export interface SessionOps {
  /** Renews the session; resolves false when Consul no longer knows it. Rejects when unreachable. */
  renew(id: string, timeoutMs: number): Promise<boolean>;
  /** Destroys the session (Consul deletes its keys). */
  destroy(id: string): Promise<void>;
  /** Called once when the lease ends, whatever the reason. */
  forget(lease: ConsulLease): void;
}

export class ConsulLease implements Lease {
  readonly expiryGraceMs: number;
  readonly lost: Promise<LeaseLostReason>;
  private resolveLost!: (reason: LeaseLostReason) => void;
  private state: 'active' | 'revoking' | 'ended' = 'active';
  private timer: NodeJS.Timeout | undefined;
  private revoking: Promise<void> | undefined;

  constructor(
    readonly id: string,
    readonly ttlMs: number,
    private readonly ops: SessionOps,
    private readonly log: Logger | undefined,
  ) {
    this.expiryGraceMs = ttlMs;
    this.lost = new Promise((resolve) => (this.resolveLost = resolve));
    this.schedule(this.renewIntervalMs);
  }

  private get renewIntervalMs(): number {
    return Math.max(1, Math.floor(this.ttlMs * SESSION_RENEW_FRACTION));
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.renew(), delayMs);
  }

  private async renew(): Promise<void> {
    this.timer = undefined;
    if (this.state !== 'active') return;
    let known: boolean;
    try {
      // never wait longer than the TTL for one renewal: the next attempt must start in time
      known = await this.ops.renew(this.id, this.ttlMs);
    } catch (err) {
      if (this.state !== 'active') return;
      this.log?.warn({ err, session: this.id }, 'session renewal failed, retrying');
      this.schedule(Math.min(SESSION_RETRY_MS, this.renewIntervalMs));
      return;
    }
    if (this.state !== 'active') return;
    if (!known) {
      this.log?.warn({ session: this.id, ttlMs: this.ttlMs }, 'session expired on the server');
      this.end('expired');
      return;
    }
    this.schedule(this.renewIntervalMs);
  }

  /** Marks the lease gone; the first reason wins. */
  end(reason: LeaseLostReason): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    clearTimeout(this.timer);
    this.timer = undefined;
    this.ops.forget(this);
    this.resolveLost(reason);
  }

  async revoke(): Promise<void> {
    if (this.state === 'ended') return;
    this.revoking ??= (async () => {
      this.state = 'revoking';
      clearTimeout(this.timer);
      try {
        await this.ops.destroy(this.id);
      } catch (err) {
        // still ours: keep it alive so its keys do not vanish later by surprise
        if (this.state === 'revoking') {
          this.state = 'active';
          this.schedule(0);
        }
        throw err;
      } finally {
        this.revoking = undefined;
      }
      this.end('revoked');
    })();
    return this.revoking;
  }

  async release(): Promise<void> {
    this.end('released');
  }
}
