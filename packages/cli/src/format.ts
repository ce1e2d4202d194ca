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

/** `--filter key=value` values → key → values; refuses keys not in `allowed` (naming the flag value). */
export function parseFilters(values: readonly string[], allowed: readonly string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const v of values) {
    const eq = v.indexOf('=');
    const key = eq > 0 ? v.slice(0, eq) : v;
    if (eq <= 0 || !allowed.includes(key)) throw new Error(`invalid --filter "${v}": expected KEY=VALUE with KEY one of ${allowed.join(', ')}`);
    out.set(key, [...(out.get(key) ?? []), v.slice(eq + 1)]);
  }
  return out;
}

/**
 * Docker's filter rule: values of one key are alternatives (any may match), different keys must all
 * match. `test(key, value)` says whether one value matches.
 */
export function matchesFilters(filters: ReadonlyMap<string, readonly string[]>, test: (key: string, value: string) => boolean): boolean {
  for (const [key, values] of filters) if (!values.some((v) => test(key, v))) return false;
  return true;
}

/** `label=k` or `label=k=v` against a label map. */
export function labelMatches(labels: Readonly<Record<string, string>> | undefined, spec: string): boolean {
  const eq = spec.indexOf('=');
  const key = eq < 0 ? spec : spec.slice(0, eq);
  if (!labels || !Object.hasOwn(labels, key)) return false;
  return eq < 0 || labels[key] === spec.slice(eq + 1);
}

/** Lines with tab-separated cells → aligned columns (the first line is the header), as Docker's table formats print. */
export function alignTabs(lines: readonly string[]): string {
  if (lines.length === 0) return '';
  if (!lines.some((l) => l.includes('\t'))) return lines.map((l) => `${l}\n`).join('');
  const rows = lines.map((l) => l.split('\t'));
  const width = Math.max(...rows.map((r) => r.length));
  const padded = rows.map((r) => Array.from({ length: width }, (_, i) => r[i] ?? ''));
  return table(padded[0]!, padded.slice(1));
}
