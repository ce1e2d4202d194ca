/**
 * One etcd watch: a gRPC Watch stream of its own on the key range of a prefix (and `startsWith`),
 * created with `start_revision = from + 1`, whose events are delivered in revision order as batches.
 *
 * State machine (one stream at a time):
 *
 * ```
 * OPENING --created--> WATCHING --events--> WATCHING (next = last event's revision + 1)
 * OPENING | WATCHING --stream error / end / no answer to a probe--> RESUMING
 * RESUMING --(backoff) reopen from next--> OPENING        (while broken for < timeoutMs)
 * RESUMING --broken for >= timeoutMs--> FAILED(WatchResetError)
 * any --canceled by etcd (compaction, auth, ...)--> FAILED(WatchResetError)
 * any --consumer stops--> ENDED          store closed --> FAILED(StoreClosedError)
 * ```
 *
 * Resuming is gapless because etcd keeps history across restarts until it is compacted; a resume
 * from a compacted revision is canceled by etcd with `compact_revision`, which becomes a reset, and
 * so does a server whose revision is behind what the watch has seen (restored data, another
 * cluster), where etcd would otherwise wait silently for the missing revisions.
 *
 * Not the `etcd3` watch manager, because: it advances its resume revision to the response header
 * revision, which during catch-up is the store's current revision while more events are still to
 * come (etcd sends at most 1000 revisions per response), so a reconnect there skips events; it
 * throws on the `watch_id = -1` answer to a progress request; and its stream never notices a server
 * that stopped answering. Here a watch that has been quiet for {@link WATCH_IDLE_PROBE_MS} sends a
 * progress request (etcd ≥ 3.4) and treats the stream as dead when nothing arrives within
 * `timeoutMs`. The answer is proof of life only, its revision is not used: etcd 3.4.23 answers out
 * of order with the events (etcd-io/etcd#15220); later versions hold the answer while the watcher
 * catches up (events arrive then) and, with several watchers on one stream, until all are synced
 * (etcd-io/etcd#20242) — one reason each watch has a stream of its own.
 */

import type { IWatchResponse } from 'etcd3';
import type { Logger } from 'pino';
import { backoffDelay, withDeadline } from './deadline.ts';
import { WatchResetError } from './errors.ts';
import { closeStream, describeGrpcError, type EtcdRpc, type KeyLayout } from './etcd-client.ts';
import type { WatchEvent } from './store.ts';
import { WatchChannel } from './watch-channel.ts';

/** A watch with no traffic for this long asks etcd for a progress notification. */
export const WATCH_IDLE_PROBE_MS = 5_000;
/** Backoff between attempts to reopen a broken watch stream. */
export const WATCH_RESUME_BASE_MS = 100;
export const WATCH_RESUME_CAP_MS = 1_000;

type WatchStream = Awaited<ReturnType<EtcdRpc['client']['watchClient']['watch']>>;

/** An etcd watch feeding a {@link WatchChannel}; see the module comment for its states. */
export class EtcdWatch {
  readonly channel: WatchChannel;
  private next: bigint;
  private stream: WatchStream | undefined;
  private created = false;
  private brokenSince: number | undefined;
  private attempt = 0;
  private liveness: NodeJS.Timeout | undefined;
  private probeSent = false;
  private reopenTimer: NodeJS.Timeout | undefined;
  private readonly log: Logger | undefined;

  /**
   * @param startsWith only keys whose path below `prefix/` starts with it (undefined: all below `prefix`).
   * @param from the revision the caller has seen; the watch delivers every change after it.
   * @param onDone called once when the watch ends for any reason (the store forgets it then).
   */
  constructor(
    private readonly rpc: EtcdRpc,
    private readonly layout: KeyLayout,
    private readonly prefix: string,
    private readonly startsWith: string | undefined,
    from: bigint,
    signal: AbortSignal | undefined,
    private readonly onDone: (watch: EtcdWatch) => void,
  ) {
    this.next = from + 1n;
    this.log = rpc.log?.child({ watch: prefix, ...(startsWith !== undefined ? { startsWith } : {}) });
    this.channel = new WatchChannel(() => this.teardown(), signal);
    if (!this.channel.isClosed) void this.open();
  }

  /** Ends the watch with an error (store closed). */
  fail(err: unknown): void {
    this.channel.fail(err);
  }

  private async open(): Promise<void> {
    this.reopenTimer = undefined;
    if (this.channel.isClosed) return;
    const opening = this.rpc.client.watchClient.watch();
    let stream: WatchStream;
    try {
      stream = await withDeadline(this.rpc.url, `watch ${JSON.stringify(this.prefix)}`, this.rpc.timeoutMs, () => opening);
    } catch (err) {
      opening.then(closeStream, () => undefined);
      this.broken(err);
      return;
    }
    if (this.channel.isClosed) {
      closeStream(stream);
      return;
    }
    this.stream = stream;
    this.created = false;
    stream.on('data', (res: IWatchResponse) => this.onResponse(stream, res));
    stream.on('error', (err: unknown) => this.onStreamGone(stream, err));
    stream.on('end', () => this.onStreamGone(stream, new Error('etcd ended the watch stream')));
    stream.write({
      create_request: {
        ...this.layout.range(this.prefix, this.startsWith),
        start_revision: this.next.toString(),
        progress_notify: true,
      },
    });
    this.armLiveness(this.rpc.timeoutMs);
  }

  private onResponse(stream: WatchStream, res: IWatchResponse): void {
    if (stream !== this.stream || this.channel.isClosed) return;
    this.probeSent = false;
    this.armLiveness(WATCH_IDLE_PROBE_MS);
    if (res.created && !this.created) {
      if (res.canceled) return this.reset(`etcd refused the watch: ${res.cancel_reason || 'no reason given'}`);
      // Resuming from a revision the server never reached would wait silently for it.
      if (BigInt(res.header.revision) < this.next - 1n) {
        return this.reset(
          `etcd is at revision ${res.header.revision}, behind revision ${(this.next - 1n).toString()} this watch has seen (restored from a backup, or another cluster)`,
        );
      }
      this.created = true;
      if (this.brokenSince !== undefined) this.log?.info({ from: this.next.toString() }, 'etcd watch resumed');
      this.brokenSince = undefined;
      this.attempt = 0;
      return;
    }
    if (res.canceled) {
      if (res.compact_revision !== '0' && res.compact_revision !== '') {
        return this.reset(
          `etcd compacted its history up to revision ${res.compact_revision}; the watch needed revision ${this.next.toString()}`,
        );
      }
      return this.reset(`etcd canceled the watch: ${res.cancel_reason || 'no reason given'}`);
    }
    if (res.events.length === 0) return; // progress notification: proof of life only
    const events: WatchEvent[] = [];
    for (const ev of res.events) {
      const key = this.layout.strip(ev.kv.key);
      const revision = ev.kv.mod_revision;
      if (String(ev.type).toUpperCase() === 'DELETE') events.push({ type: 'delete', key, revision });
      else events.push({ type: 'put', key, value: new Uint8Array(ev.kv.value), revision });
    }
    // Not res.header.revision: while catching up it is the store's revision, ahead of events still to come.
    const last = events[events.length - 1]!.revision;
    this.next = BigInt(last) + 1n;
    this.channel.push({ events, revision: last });
  }

  private onStreamGone(stream: WatchStream, err: unknown): void {
    if (stream !== this.stream) return;
    this.dropStream();
    this.broken(err);
  }

  /** A quiet stream gets one progress request; a stream that then stays silent is dead. */
  private armLiveness(ms: number): void {
    clearTimeout(this.liveness);
    this.liveness = setTimeout(() => {
      const stream = this.stream;
      if (!stream) return;
      if (!this.created || this.probeSent) {
        this.dropStream();
        this.broken(new Error(`etcd did not answer on the watch stream within ${this.rpc.timeoutMs} ms`));
        return;
      }
      this.probeSent = true;
      stream.write({ progress_request: {} });
      this.armLiveness(this.rpc.timeoutMs);
    }, ms);
  }

  private dropStream(): void {
    clearTimeout(this.liveness);
    this.liveness = undefined;
    const stream = this.stream;
    this.stream = undefined;
    closeStream(stream);
  }

  /** The connection failed: reopen from `next` with backoff, or reset once broken for too long. */
  private broken(err: unknown): void {
    if (this.channel.isClosed) return;
    if (err instanceof Error && /invalid auth token/.test(err.message)) {
      // etcd3 renews its token only when a unary call is refused; make one so the reopened stream gets a fresh one
      void this.rpc.client.kv.range({ ...this.layout.range(this.prefix, this.startsWith), count_only: true }).catch(() => undefined);
    }
    const now = performance.now();
    this.brokenSince ??= now;
    const brokenFor = now - this.brokenSince;
    if (brokenFor >= this.rpc.timeoutMs) {
      this.reset(`the connection to ${this.rpc.url} broke and the watch could not resume within ${this.rpc.timeoutMs} ms (${describeGrpcError(err)})`, err);
      return;
    }
    const delay = Math.min(backoffDelay(this.attempt++, WATCH_RESUME_BASE_MS, WATCH_RESUME_CAP_MS), this.rpc.timeoutMs - brokenFor);
    this.log?.debug({ err: describeGrpcError(err), attempt: this.attempt, delayMs: Math.round(delay) }, 'etcd watch stream broke, resuming');
    this.reopenTimer = setTimeout(() => void this.open(), delay);
  }

  private reset(reason: string, cause?: unknown): void {
    this.log?.info({ reason }, 'etcd watch must be restarted from a fresh listing');
    this.channel.fail(new WatchResetError(this.prefix, reason, cause === undefined ? undefined : { cause }));
  }

  /** The channel closed (consumer stopped, reset, store closed): release the stream and timers. */
  private teardown(): void {
    clearTimeout(this.reopenTimer);
    this.reopenTimer = undefined;
    this.dropStream();
    this.onDone(this);
  }
}

