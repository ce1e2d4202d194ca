/**
 * The async iterator behind every backend's `watch()`: the backend pushes batches and finally ends
 * or fails it; the consumer iterates. Batches queue without limit while the consumer is busy (a
 * watch must never drop a change), and the consumer's abort signal or `return()` stops the backend
 * through `onClose`.
 */

import type { WatchBatch } from './store.ts';

export class WatchChannel implements AsyncIterable<WatchBatch> {
  private readonly queue: WatchBatch[] = [];
  private waiter: { resolve: (r: IteratorResult<WatchBatch>) => void; reject: (e: unknown) => void } | undefined;
  private failure: unknown;
  private ended = false;
  private closed = false;
  private iterated = false;

  /**
   * @param onClose called once when the consumer stops (abort, break, return) or the channel ends;
   *   the backend releases its server-side watch there.
   */
  constructor(
    private readonly onClose: () => void,
    signal?: AbortSignal,
  ) {
    if (signal) {
      if (signal.aborted) queueMicrotask(() => this.end());
      else signal.addEventListener('abort', () => this.end(), { once: true });
    }
  }

  /** True once the consumer stopped or the channel ended; a backend stops producing then. */
  get isClosed(): boolean {
    return this.closed;
  }

  push(batch: WatchBatch): void {
    if (this.ended || batch.events.length === 0) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: batch, done: false });
    } else {
      this.queue.push(batch);
    }
  }

  /** Ends the iteration with an error after the queued batches are consumed. */
  fail(err: unknown): void {
    if (this.ended) return;
    this.failure = err;
    this.ended = true;
    this.close();
    this.flushWaiter();
  }

  /** Ends the iteration normally after the queued batches are consumed. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.close();
    this.flushWaiter();
  }

  private flushWaiter(): void {
    if (!this.waiter || this.queue.length > 0) return;
    const w = this.waiter;
    this.waiter = undefined;
    if (this.failure !== undefined) w.reject(this.failure);
    else w.resolve({ value: undefined, done: true });
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.onClose();
    } catch {
      // the backend's cleanup must not break the consumer
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    if (this.iterated) throw new Error('a watch can be iterated only once');
    this.iterated = true;
    return {
      next: () => {
        const batch = this.queue.shift();
        if (batch) return Promise.resolve({ value: batch, done: false });
        if (this.ended) {
          if (this.failure !== undefined) {
            const f = this.failure;
            this.failure = undefined;
            return Promise.reject(f);
          }
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      return: () => {
        this.queue.length = 0;
        this.failure = undefined;
        this.end();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
