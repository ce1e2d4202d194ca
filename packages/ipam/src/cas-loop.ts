/** The one compare-and-swap retry loop every IPAM write goes through: bounded, with full-jitter backoff. */

import { backoffDelay, sleep } from '@kvnet/store';
import { CasGaveUpError } from './errors.ts';

/** First backoff window after a lost race; doubles per attempt up to {@link CAS_BACKOFF_CAP_MS}. */
export const CAS_BACKOFF_BASE_MS = 2;
export const CAS_BACKOFF_CAP_MS = 200;

/** What one attempt returns: a result, or `retry` after losing a race (nothing was written). */
export type Attempt<T> = { readonly done: T } | 'retry';

export interface CasLoopOptions {
  readonly maxAttempts: number;
  /** Called once per lost race, before the backoff. */
  readonly onRetry?: (attempt: number) => void;
  readonly baseMs?: number;
  readonly capMs?: number;
}

/**
 * Runs `attempt(n)` for n = 0, 1, … until it returns `{done}`; sleeps a random
 * `[0, min(cap, base·2^n))` ms after each `retry`. Errors thrown by `attempt` end the loop as they are.
 * After `maxAttempts` lost races: {@link CasGaveUpError} naming `operation`.
 */
export async function casLoop<T>(operation: string, options: CasLoopOptions, attempt: (n: number) => Promise<Attempt<T>>): Promise<T> {
  const base = options.baseMs ?? CAS_BACKOFF_BASE_MS;
  const cap = options.capMs ?? CAS_BACKOFF_CAP_MS;
  for (let n = 0; n < options.maxAttempts; n++) {
    const r = await attempt(n);
    if (r !== 'retry') return r.done;
    if (n + 1 < options.maxAttempts) {
      options.onRetry?.(n);
      await sleep(backoffDelay(n, base, cap));
    }
  }
  throw new CasGaveUpError(operation, options.maxAttempts);
}
