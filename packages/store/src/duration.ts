/**
 * Durations as the docs and Docker write them: `10s`, `1500ms`, `1m30s`, `2h`, fractions allowed
 * (`1.5s`). A bare number is in the caller's unit (`--ttl 10` means seconds, `kv.timeout=5000`
 * milliseconds), so values written before units were accepted keep their meaning.
 */

const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };
const DURATION = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;

/** `text` in milliseconds, or undefined when it is not a duration; a bare number counts in `bareUnit`. */
export function parseDurationMs(text: string, bareUnit: 'ms' | 's'): number | undefined {
  const t = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(t)) return Number(t) * UNIT_MS[bareUnit]!;
  if (!DURATION.test(t)) return undefined;
  let ms = 0;
  for (const m of t.matchAll(PART)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
  return ms;
}
