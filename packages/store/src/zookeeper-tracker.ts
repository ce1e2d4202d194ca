/**
 * Following a ZooKeeper subtree with one-shot watches: the machinery behind the ZooKeeper backend's
 * `list` and `watch`.
 *
 * A {@link PrefixTracker} reads every znode below a root with a data watch (getData) and a child
 * watch (getChildren2), and re-reads a znode whenever one of its watches fires. All bookkeeping runs
 * synchronously as replies and notifications are parsed, so it sees them in wire order, and ZooKeeper
 * sends the notification of a change before any reply that reflects a later state. Hence:
 *
 * - when no read is outstanding ("settled"), the tracked tree is exactly the server's state at the
 *   last reply: that is a consistent listing, with no snapshot read in ZooKeeper;
 * - while reads are outstanding, every change not yet seen has a zxid above the smallest
 *   outstanding read's {@link PrefixTracker.bound | bound} (the reply zxid of the read that armed the
 *   watch), so everything at or below it can already be reported in order.
 *
 * A {@link TrackedWatch} turns that into watch batches: it diffs what the consumer has seen against
 * the tracked state up to the bound ({@link diffSnapshots}), ordered by mzxid; deletes come last in
 * a batch. A change that happens while the connection is down is re-announced by the server when
 * the client re-arms its watches after reconnecting (with the last zxid it saw), so only the end of
 * the session breaks a watch: it then fails with {@link WatchResetError}.
 */

import type { Logger } from 'pino';
import { StoreUnavailableError, WatchResetError } from './errors.ts';
import { isUnder, validateKey } from './keys.ts';
import { diffSnapshots, type SnapshotCache, type SnapshotEntry } from './snapshot-diff.ts';
import type { WatchChannel } from './watch-channel.ts';
import { isConnectionError, SessionEndedError, ZK, ZkError, type WatchKind, type ZkSession, type ZkStat } from './zookeeper-session.ts';

/** First byte of every kvnet key's znode data; implicit parents have empty data. */
export const KEY_MARKER = 0x01;

/** A key as tracked: its value, revision, mzxid (order) and owning session (lease). */
export interface TrackedEntry extends SnapshotEntry {
  readonly leaseId?: string;
}

interface TNode {
  readonly path: string;
  /** Key relative to the store root. */
  readonly key: string;
  readonly parent: TNode | undefined;
  readonly children: Map<string, TNode>;
  /** Last data read; `value` undefined for an implicit parent. */
  data?: { readonly stat: ZkStat; readonly value: Uint8Array | undefined };
  /** Stat from the last children read (has the pzxid). */
  childStat?: ZkStat;
  /** Reply zxid of the last successful data / children read (0n before the first). */
  dataZxid: bigint;
  childZxid: bigint;
  /** A read found the znode missing; its parent's re-read removes it. */
  gone: boolean;
}

type ReadKind = 'data' | 'children' | 'exists';

interface PendingRead {
  readonly node: TNode;
  readonly kind: ReadKind;
  /** Every change this read may reveal has a zxid above this. */
  readonly bound: bigint;
  inFlight: boolean;
}

export interface TrackerHooks {
  /** After each processed reply (synchronously). */
  onUpdate(): void;
  /** Once, when tracking cannot go on (session over, access denied, protocol error). */
  onFail(err: unknown): void;
}

/** Formats a zxid as an opaque revision string. */
export function hexZxid(zxid: bigint): string {
  return zxid.toString(16);
}

/** The revision of a key: its mzxid and data version (the version is what ZooKeeper compares). */
export function keyRevision(stat: ZkStat): string {
  return `${hexZxid(stat.mzxid)}.${stat.version}`;
}

export function leaseIdOf(stat: ZkStat): string | undefined {
  return stat.ephemeralOwner === 0n ? undefined : stat.ephemeralOwner.toString(16).padStart(16, '0');
}

/** The value of a kvnet key's znode data, or undefined for an implicit parent (or foreign data). */
export function decodeNodeData(data: Buffer): Uint8Array | undefined {
  return data.length > 0 && data[0] === KEY_MARKER ? data.subarray(1) : undefined;
}

function isValidSegment(name: string): boolean {
  try {
    validateKey(name);
    return !name.includes('/');
  } catch {
    return false;
  }
}

/** Follows every znode below `rootPath` (see the module comment). */
export class PrefixTracker {
  private readonly root: TNode;
  private readonly byPath = new Map<string, TNode>();
  private readonly pending = new Map<string, PendingRead>();
  /** Order (zxid upper bound) at which a key that was tracked disappeared. */
  private readonly deletions = new Map<string, bigint>();
  private rootExists = false;
  private rootZxid = 0n;
  private started = false;
  private stopped = false;
  private readonly unsubscribe: Array<() => void> = [];

  constructor(
    private readonly session: ZkSession,
    rootPath: string,
    private readonly storeRoot: string,
    private readonly hooks: TrackerHooks,
  ) {
    this.root = this.makeNode(rootPath, undefined);
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.unsubscribe.push(
      this.session.onWatch((kind, path) => this.onWatch(kind, path)),
      this.session.onConnect(() => this.reissue()),
      this.session.onEnd((reason, detail) => this.fail(new SessionEndedError(reason, detail))),
    );
    this.read(this.root, 'children', 0n);
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const u of this.unsubscribe) u();
    this.pending.clear();
  }

  /** True when no read is outstanding: the tracked tree is the server's state at the last reply. */
  get settled(): boolean {
    return this.started && !this.stopped && this.pending.size === 0;
  }

  /** Every unseen change has a zxid above this; undefined when settled (nothing unseen). */
  bound(): bigint | undefined {
    let min: bigint | undefined;
    for (const p of this.pending.values()) if (min === undefined || p.bound < min) min = p.bound;
    return min;
  }

  /**
   * The keys as tracked now (each a true state of that key, at its mzxid); with `inRange`, only
   * those it accepts (a `startsWith` range, filtered here: the tracker follows the whole subtree).
   */
  entries(inRange?: (key: string) => boolean): Map<string, TrackedEntry> {
    const out = new Map<string, TrackedEntry>();
    for (const node of this.byPath.values()) {
      const d = node.data;
      if (!d || d.value === undefined) continue;
      if (inRange && !inRange(node.key)) continue;
      const leaseId = leaseIdOf(d.stat);
      out.set(node.key, { value: d.value, revision: keyRevision(d.stat), order: d.stat.mzxid, ...(leaseId ? { leaseId } : {}) });
    }
    return out;
  }

  /**
   * The largest zxid in the tracked subtree (the root's pzxid, every znode's mzxid and pzxid), 0n
   * when the root does not exist. Every change below the root raises it; meaningful when settled.
   */
  revision(): bigint {
    if (!this.rootExists) return 0n;
    let max = this.root.childStat?.pzxid ?? 0n;
    for (const node of this.byPath.values()) {
      if (node.data && node.data.stat.mzxid > max) max = node.data.stat.mzxid;
      if (node.childStat && node.childStat.pzxid > max) max = node.childStat.pzxid;
    }
    return max;
  }

  deletionOrder(key: string): bigint | undefined {
    return this.deletions.get(key);
  }

  /** Drops remembered deletions the caller no longer needs. */
  forgetDeletions(keep: (key: string) => boolean): void {
    for (const key of [...this.deletions.keys()]) if (!keep(key)) this.deletions.delete(key);
  }

  // ---- internals ----

  private makeNode(path: string, parent: TNode | undefined): TNode {
    return {
      path,
      key: path === this.storeRoot ? '' : path.slice(this.storeRoot.length + 1),
      parent,
      children: new Map(),
      dataZxid: 0n,
      childZxid: 0n,
      gone: false,
    };
  }

  private fail(err: unknown): void {
    if (this.stopped) return;
    this.stop();
    this.hooks.onFail(err);
  }

  private onWatch(kind: WatchKind, path: string): void {
    if (this.stopped) return;
    if (path === this.root.path) {
      if (kind === 'child') this.read(this.root, 'children', this.root.childZxid);
      else if (kind === 'exists') this.read(this.root, 'children', this.rootZxid);
      return;
    }
    const node = this.byPath.get(path);
    if (!node) return;
    if (kind === 'child') this.read(node, 'children', node.childZxid);
    else this.read(node, 'data', node.dataZxid);
  }

  /**
   * Makes sure a read of `kind` for `node` is outstanding. A watch firing while the same read is
   * in flight needs nothing more: that read was answered after the change, so it shows it.
   */
  private read(node: TNode, kind: ReadKind, bound: bigint): void {
    const id = `${kind}:${node.path}`;
    const existing = this.pending.get(id);
    if (existing && existing.node === node) {
      if (!existing.inFlight && this.session.isConnected) this.issue(existing);
      return;
    }
    const entry: PendingRead = { node, kind, bound, inFlight: false };
    this.pending.set(id, entry);
    this.issue(entry);
  }

  private reissue(): void {
    if (this.stopped) return;
    for (const p of this.pending.values()) if (!p.inFlight) this.issue(p);
  }

  private issue(p: PendingRead): void {
    p.inFlight = true;
    const id = `${p.kind}:${p.node.path}`;
    const current = (): boolean => !this.stopped && this.pending.get(id) === p;
    const onError = (err: unknown): boolean => {
      if (err instanceof SessionEndedError) {
        this.fail(err);
        return true;
      }
      if (isConnectionError(err)) {
        // Read again once the client has reconnected within the session (onConnect). Never re-send
        // from inside this callback: the client fails its pending requests while it still counts
        // itself connected, and a request queued then would be failed again by the same loop.
        p.inFlight = false;
        setImmediate(() => {
          if (current() && !p.inFlight && this.session.isConnected) this.issue(p);
        });
        return true;
      }
      return false;
    };
    switch (p.kind) {
      case 'data':
        this.session.readData(p.node.path, true, (err, reply) => {
          if (!current()) return;
          if (err && onError(err)) return;
          if (err) {
            if (err instanceof ZkError && err.code === ZK.NO_NODE) p.node.gone = true;
            else return this.fail(err);
          } else if (reply) {
            const node = p.node;
            const had = node.data?.value !== undefined;
            const value = decodeNodeData(reply.data);
            node.data = { stat: reply.stat, value };
            node.dataZxid = reply.zxid;
            if (value !== undefined) this.deletions.delete(node.key);
            else if (had) this.deletions.set(node.key, reply.stat.mzxid);
          }
          this.pending.delete(id);
          this.hooks.onUpdate();
        });
        break;
      case 'children':
        this.session.readChildren(p.node.path, true, (err, reply) => {
          if (!current()) return;
          if (err && onError(err)) return;
          this.pending.delete(id);
          if (err) {
            if (!(err instanceof ZkError && err.code === ZK.NO_NODE)) return this.fail(err);
            if (p.node === this.root) {
              const at = err.zxid ?? this.rootZxid;
              this.rootZxid = at;
              this.rootExists = false;
              for (const child of [...this.root.children.values()]) this.remove(child, at);
              this.read(this.root, 'exists', at);
            } else {
              p.node.gone = true;
            }
          } else if (reply) {
            this.applyChildren(p.node, reply.children, reply.stat, reply.zxid);
          }
          this.hooks.onUpdate();
        });
        break;
      case 'exists':
        this.session.readExists(p.node.path, true, (err, stat, zxid) => {
          if (!current()) return;
          if (err && onError(err)) return;
          this.pending.delete(id);
          if (err) return this.fail(err);
          if (zxid !== undefined) this.rootZxid = zxid;
          // Absent: the existence watch now armed fires when it is created.
          if (stat) this.read(this.root, 'children', this.rootZxid);
          this.hooks.onUpdate();
        });
        break;
    }
  }

  private applyChildren(node: TNode, names: string[], stat: ZkStat, zxid: bigint): void {
    const previous = node.childZxid;
    node.childStat = stat;
    node.childZxid = zxid;
    if (node === this.root) {
      this.rootExists = true;
      this.rootZxid = zxid;
    }
    const listed = new Set(names);
    for (const [name, child] of [...node.children]) {
      if (!listed.has(name) || child.gone) this.remove(child, stat.pzxid);
    }
    for (const name of listed) {
      // Znodes whose names are not valid key segments were not written by kvnet: not keys.
      if (node.children.has(name) || !isValidSegment(name)) continue;
      const child = this.makeNode(`${node.path}/${name}`, node);
      node.children.set(name, child);
      this.byPath.set(child.path, child);
      // Created after the previous listing of its parent: everything about it is newer than that.
      this.read(child, 'data', previous);
      this.read(child, 'children', previous);
    }
  }

  /** Forgets `node` and everything below it; their keys count as deleted at `order`. */
  private remove(node: TNode, order: bigint): void {
    for (const child of node.children.values()) this.remove(child, order);
    node.children.clear();
    if (node.data?.value !== undefined) this.deletions.set(node.key, order);
    for (const kind of ['data', 'children'] as const) {
      const id = `${kind}:${node.path}`;
      if (this.pending.get(id)?.node === node) this.pending.delete(id);
    }
    if (this.byPath.get(node.path) === node) this.byPath.delete(node.path);
    const name = node.path.slice(node.path.lastIndexOf('/') + 1);
    if (node.parent?.children.get(name) === node) node.parent.children.delete(name);
  }
}

/** Coalesces bursts of replies into one batch. */
const FLUSH_DEFER = setImmediate;

export interface TrackedWatchOptions {
  readonly session: ZkSession;
  readonly rootPath: string;
  readonly storeRoot: string;
  readonly prefix: string;
  /**
   * Only keys whose path below `prefix/` starts with this. Filtered here, client side: the
   * tracker still follows every znode below the prefix, and revisions stay the whole subtree's
   * (the same as a `startsWith` listing's), so a range is correct but no cheaper than its prefix.
   */
  readonly startsWith?: string;
  readonly fromRevision: string;
  readonly cache: SnapshotCache;
  readonly channel: WatchChannel;
  /** The first consistent read must complete within this, else the watch fails as unavailable. */
  readonly startTimeoutMs: number;
  readonly url: string;
  /** Turns a tracker failure into the error the consumer sees. */
  readonly mapError: (err: unknown) => unknown;
  readonly logger?: Logger;
  readonly onStop: () => void;
}

/** One `watch()`: a tracker plus the state the consumer has seen (see the module comment). */
export class TrackedWatch {
  private readonly tracker: PrefixTracker;
  private readonly inRange: ((key: string) => boolean) | undefined;
  private emitted: Map<string, SnapshotEntry> | undefined;
  private flushQueued = false;
  private startTimer: NodeJS.Timeout | undefined;
  private done = false;

  constructor(private readonly o: TrackedWatchOptions) {
    const { prefix, startsWith } = o;
    this.inRange = startsWith === undefined ? undefined : (key) => isUnder(prefix, key, startsWith);
    this.tracker = new PrefixTracker(o.session, o.rootPath, o.storeRoot, {
      onUpdate: () => this.queueFlush(),
      onFail: (err) => this.fail(o.mapError(err)),
    });
  }

  start(): void {
    this.startTimer = setTimeout(() => {
      if (!this.emitted) {
        this.fail(new StoreUnavailableError(this.o.url, `watch on ${JSON.stringify(this.o.prefix)} could not read the current state within ${this.o.startTimeoutMs} ms`));
      }
    }, this.o.startTimeoutMs);
    this.tracker.start();
  }

  /** Ends the watch with `err` (after the batches already queued). */
  fail(err: unknown): void {
    if (this.done) return;
    this.o.logger?.info({ prefix: this.o.prefix, err }, 'watch ended');
    this.stop();
    this.o.channel.fail(err);
  }

  stop(): void {
    if (this.done) return;
    this.done = true;
    if (this.startTimer) clearTimeout(this.startTimer);
    this.tracker.stop();
    this.o.onStop();
  }

  private queueFlush(): void {
    if (this.flushQueued || this.done) return;
    this.flushQueued = true;
    FLUSH_DEFER(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.done) return;
    if (this.o.channel.isClosed) return this.stop();
    const { tracker } = this;
    if (!this.emitted) {
      if (!tracker.settled) return;
      if (this.startTimer) clearTimeout(this.startTimer);
      const baseline = this.o.cache.recall(this.o.prefix, this.o.startsWith, this.o.fromRevision);
      if (baseline) {
        this.emitted = new Map(baseline);
      } else if (hexZxid(tracker.revision()) === this.o.fromRevision) {
        // nothing below the prefix changed since that listing, so neither did the range
        this.emitted = tracker.entries(this.inRange);
      } else {
        return this.fail(
          new WatchResetError(this.o.prefix, `revision ${this.o.fromRevision} was not listed by this store object and the prefix has changed since`),
        );
      }
    }
    const bound = tracker.bound();
    const upTo = (order: bigint | undefined): boolean => bound === undefined || (order !== undefined && order <= bound);
    const current = tracker.entries(this.inRange);
    const next = new Map(this.emitted);
    let changed = false;
    for (const [key, entry] of current) {
      if (this.emitted.get(key)?.revision !== entry.revision && upTo(entry.order)) {
        next.set(key, entry);
        changed = true;
      }
    }
    for (const key of this.emitted.keys()) {
      if (!current.has(key) && upTo(tracker.deletionOrder(key))) {
        next.delete(key);
        changed = true;
      }
    }
    if (!changed) return;
    // Settled: the list-style revision of this exact state. Otherwise a partial position, which only
    // this store object's cache knows.
    const at = bound ?? tracker.revision();
    const revision = bound === undefined ? hexZxid(at) : `p${hexZxid(at)}`;
    const events = diffSnapshots(this.emitted, next, revision, at);
    this.emitted = next;
    tracker.forgetDeletions((key) => next.has(key));
    this.o.cache.remember(this.o.prefix, this.o.startsWith, revision, next);
    this.o.channel.push({ events, revision });
  }
}
