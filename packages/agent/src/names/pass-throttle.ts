/**
 * Spacing for the names face's passes that only remote endpoints asked for. A pass rebuilds and sends
 * the whole name table (every endpoint of every network with a local sandbox: 2 000 records at
 * 100 hosts × 20), so one per remote connect would cost every host a full table per event during a
 * burst. {@link PassThrottle.request} runs a pass at once when none ran for {@link intervalMs}
 * (a remote name is never later than it was at a low rate), and otherwise one pass at the end of the
 * interval for everything that arrived meanwhile. Passes for local changes do not go through it.
 */

/** Timer functions (the global ones by default; a test passes its own). */
export interface ThrottleTimers {
  readonly now: () => number;
  readonly setTimeout: (fn: () => void, ms: number) => unknown;
  readonly clearTimeout: (handle: unknown) => void;
}

const GLOBAL_TIMERS: ThrottleTimers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export class PassThrottle {
  private lastAt = Number.NEGATIVE_INFINITY;
  private timer: unknown;
  private stopped = false;

  /**
   * @param intervalMs least time between two passes this throttle starts
   * @param run starts a pass (the face's `sync`: passes never overlap, requests during one are folded)
   */
  constructor(
    readonly intervalMs: number,
    private readonly run: () => void,
    private readonly timers: ThrottleTimers = GLOBAL_TIMERS,
  ) {}

  /** Asks for a pass: now, or at the end of the interval (one for all requests until then). */
  request(): void {
    if (this.stopped || this.timer !== undefined) return;
    const wait = this.lastAt + this.intervalMs - this.timers.now();
    if (wait <= 0) {
      this.fire();
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = undefined;
      this.fire();
    }, wait);
  }

  /** Drops a pending pass; later requests do nothing. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private fire(): void {
    if (this.stopped) return;
    this.lastAt = this.timers.now();
    this.run();
  }
}
