/**
 * What every `npm run bench -- <suite>` shares: how results are printed (a table for people, or with
 * `--json` one object per case and nothing else on stdout), how a suite's main function ends, and the
 * production bundle the agent-running suites start.
 */

import { join } from 'node:path';
import { REPO_ROOT, run } from '../support/process.ts';

export type Row = Record<string, unknown>;

export interface TableOptions {
  /** First line, above the column heads. */
  readonly title: string;
  /** Column keys, in order. */
  readonly columns: readonly string[];
  /** Lines under the table (what the columns mean, targets). */
  readonly notes?: readonly string[];
  /** Width of a column (default: its key's length + 1, at least 11). */
  readonly width?: (column: string) => number;
  /** One line per column key and one column per row (for many figures over few cases). */
  readonly transpose?: boolean;
}

/** Prints `rows` as JSON lines (`json`) or as a right-aligned table. */
export function printRows(rows: readonly Row[], json: boolean, table: TableOptions): void {
  if (json) {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  if (table.transpose) {
    const keyWidth = Math.max(...table.columns.map((c) => c.length)) + 1;
    const cell = Math.max(10, ...rows.flatMap((r) => table.columns.map((c) => String(r[c] ?? '').length + 2)));
    const lines = [table.title, ...table.columns.map((c) => c.padEnd(keyWidth) + rows.map((r) => String(r[c] ?? '').padStart(cell)).join('')), ...(table.notes ?? [])];
    process.stdout.write(`${lines.join('\n')}\n`);
    return;
  }
  const width = table.width ?? ((c: string) => Math.max(11, c.length + 1));
  const line = (cells: (c: string) => string): string => table.columns.map((c) => cells(c).padStart(width(c))).join('');
  const lines = [table.title, line((c) => c), ...rows.map((r) => line((c) => String(r[c] ?? ''))), ...(table.notes ?? [])];
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** Runs a suite's main function; a failure prints its stack on stderr and sets exit code 1. */
export function runBench(main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  });
}

/**
 * The agent bundle a suite runs: `given` (`--bundle`), or the production bundle built now into
 * dist/kvnet.mjs (dist/, not a temp dir: the bundle resolves its external dependencies from the
 * repo's node_modules).
 */
export async function agentBundle(given: string | undefined): Promise<string> {
  if (given) return given;
  const bundle = join(REPO_ROOT, 'dist', 'kvnet.mjs');
  await run(process.execPath, [join(REPO_ROOT, 'scripts', 'build.mjs'), bundle]);
  return bundle;
}
