/** Plain-text tables for `ls` commands (Docker's look: upper-case headers, columns padded with 3 spaces). */

export function table(headers: readonly string[], rawRows: ReadonlyArray<ReadonlyArray<string | undefined>>): string {
  // An agent of another version may leave a field out: show '-' rather than fail.
  const rows = rawRows.map((r) => headers.map((_, i) => r[i] ?? '-'));
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** `k=v` → [k, v]; throws naming the flag when there is no `=`. */
export function keyValue(flag: string, text: string): [string, string] {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new Error(`invalid ${flag} "${text}": expected KEY=VALUE`);
  return [text.slice(0, eq), text.slice(eq + 1)];
}
