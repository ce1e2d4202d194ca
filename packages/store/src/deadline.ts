/** Bounded waiting: every call to a server goes through {@link withDeadline}. */

import { StoreUnavailableError } from './errors.ts';

/**
 * Runs `fn` with an AbortSignal that fires after `timeoutMs` (or when `outer` aborts) and rejects
 * with {@link StoreUnavailableError} naming `url` and `what` if the deadline passes first. The
 * underlying request may still complete on the server; callers rely on idempotent writes.
 */
export async function withDeadline<T>(
  url: string,
  what: string,
  timeoutMs: number,
  fn: (signal: AbortSignal) => Promise<T>,
  outer?: AbortSignal,
): Promise<T> {
  outer?.throwIfAborted();
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let onOuterAbort: (() => void) | undefined;
  const timeout = new Promise<never>((_, reject) => {
    // Reject first, then abort: the caller sees the deadline error, not whatever the aborted
    // request throws. An outer abort rejects at once with its reason.
    onOuterAbort = (): void => {
      reject(outer?.reason);
      controller.abort(outer?.reason);
    };
    outer?.addEventListener('abort', onOuterAbort, { once: true });
    timer = setTimeout(() => {
      reject(new StoreUnavailableError(url, `${what} got no answer within ${timeoutMs} ms`));
      controller.abort(new Error('deadline'));
    }, timeoutMs);
  });
  try {
    return await Promise.race([fn(controller.signal), timeout]);
  } finally {
    clearTimeout(timer);
    if (onOuterAbort) outer?.removeEventListener('abort', onOuterAbort);
  }
}

/** Sleeps `ms`, waking early (and rejecting with the abort reason) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base·2^attempt)). */
export function backoffDelay(attempt: number, baseMs: number, capMs: number): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 20));
}
