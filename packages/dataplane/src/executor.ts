/**
 * Runs a {@link Plan}: stage after stage, the batches of one stage concurrently, each batch as one
 * `ip`/`bridge -force -batch -` process. `-force` keeps going after a failing line, so one refused object
 * never stops the others; each failure is mapped back to its line's object. A line whose prerequisites
 * failed in an earlier stage is not sent, and a failure caused by one earlier in the same batch (same
 * object, or a line it requires) is not reported twice: the report holds the root causes.
 */

import { netnsLabel } from './config.ts';
import type { NetnsTarget, Plan, PlanBatch, PlanOp } from './dataplane.ts';
import { CommandFailedError, KernelRefusedError, type DataplaneError } from './errors.ts';
import { runBatch, type BatchResult } from './iproute2.ts';
import { mapConcurrent } from './concurrency.ts';

/** Batches of one stage run at most this many at a time. */
export const BATCH_CONCURRENCY = 4;

export type BatchRunner = (
  tool: 'ip' | 'bridge',
  netns: NetnsTarget,
  lines: readonly string[],
  options: { signal?: AbortSignal },
) => Promise<BatchResult>;

export interface ExecutionResult {
  /** Lines the kernel accepted. */
  readonly succeeded: number;
  /** Root-cause errors, one per failed object. */
  readonly errors: readonly DataplaneError[];
  /** Keys of every op that failed or was skipped. */
  readonly failedKeys: ReadonlySet<string>;
}

interface BatchOutcome {
  readonly batch: PlanBatch;
  readonly sent: readonly PlanOp[];
  readonly skipped: readonly PlanOp[];
  readonly result?: BatchResult;
}

export async function executePlan(
  plan: Plan,
  options: { runner?: BatchRunner; signal?: AbortSignal; concurrency?: number } = {},
): Promise<ExecutionResult> {
  const runner = options.runner ?? ((tool, netns, lines, o) => runBatch(tool, netns, lines, o));
  const failedKeys = new Set<string>();
  const errors: DataplaneError[] = [];
  let succeeded = 0;
  for (const stage of plan.stages) {
    options.signal?.throwIfAborted();
    // Decide what to send from the failures of earlier stages only, so concurrent batches see the same set.
    const before = new Set(failedKeys);
    const outcomes = await mapConcurrent(stage.batches, options.concurrency ?? BATCH_CONCURRENCY, async (batch): Promise<BatchOutcome> => {
      const sent = batch.ops.filter((op) => !op.requires.some((k) => before.has(k)));
      const skipped = batch.ops.filter((op) => op.requires.some((k) => before.has(k)));
      if (sent.length === 0) return { batch, sent, skipped };
      const lines = sent.map((op) => op.line);
      const result = await runner(batch.tool, batch.netns, lines, options.signal ? { signal: options.signal } : {});
      return { batch, sent, skipped, result };
    });
    for (const { batch, sent, skipped, result } of outcomes) {
      for (const op of skipped) failedKeys.add(op.key);
      if (!result) continue;
      const where = netnsLabel(batch.netns);
      if (result.fatal !== undefined) {
        const first = sent[0]!;
        errors.push(new CommandFailedError({ ...first.object, netns: where }, `${batch.tool} -batch (${sent.length} lines, first: ${first.line})`, result.fatal));
        for (const op of sent) failedKeys.add(op.key);
        continue;
      }
      const failedHere = new Set<string>();
      sent.forEach((op, i) => {
        const reason = result.failures.get(i + 1);
        if (reason === undefined) {
          succeeded++;
          return;
        }
        const consequence = failedHere.has(op.key) || op.requires.some((k) => failedHere.has(k));
        if (!consequence) errors.push(new KernelRefusedError(op.object, op.action, where, reason, op.line));
        failedHere.add(op.key);
        failedKeys.add(op.key);
      });
    }
  }
  return { succeeded, errors, failedKeys };
}
