/**
 * `npm run bench -- dns [--json] [--samples N] [--warmup N] [--namespaces N]` (root: network namespaces).
 *
 * For now the names face alone on the real kernel (dns-resolve.ts): resolve p50/p99 of a kvnet name
 * and of a forwarded name from a container, the upstream asked directly as the floor, and the resolver
 * process's start time, RSS and listener-opening cost. The Docker comparison (docker-embedded, name
 * visible/gone across hosts) comes with the agent wiring. Prints a table, or with --json one object per
 * case on stdout and nothing else (progress on stderr).
 */

import { benchResolve, type BenchRow } from './dns-resolve.ts';

interface Options {
  json: boolean;
  samples: number;
  warmup: number;
  namespaces: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, samples: 1000, warmup: 100, namespaces: 20 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--samples') o.samples = Number(argv[++i]);
    else if (a === '--warmup') o.warmup = Number(argv[++i]);
    else if (a === '--namespaces') o.namespaces = Number(argv[++i]);
    else throw new Error(`unknown option ${a}; usage: dns [--json] [--samples N] [--warmup N] [--namespaces N]`);
  }
  for (const [k, v] of Object.entries({ samples: o.samples, warmup: o.warmup, namespaces: o.namespaces })) {
    if (!Number.isInteger(v) || v < 0 || (k === 'samples' && v < 1)) throw new Error(`--${k} must be a non-negative integer${k === 'samples' ? ' ≥ 1' : ''}, not ${v}`);
  }
  return o;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('the dns benchmark needs root (network namespaces)\n');
    process.exit(2);
  }
  const rows = await benchResolve({ ...options, progress: (m) => void process.stderr.write(`${m}\n`) });
  if (options.json) {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const show = (r: BenchRow, keys: string[]): string => keys.map((k) => `${k}=${r[k]}`).join('  ');
  const lines = ['dns: the names face on the real kernel (one simulated host, no Docker)'];
  for (const r of rows) {
    if (r.case === 'resolver') lines.push(`resolver   ${show(r, ['start_bundle_ms', 'rss_bundle_mib', 'start_tsx_ms', 'rss_tsx_mib', 'listener_open_p50_ms', 'namespaces', 'open_namespaces_ms', 'open_per_namespace_ms'])}`);
    else lines.push(`${String(r.impl).padEnd(16)} ${String(r.name).padEnd(10)} ${show(r, ['resolve_p50_ms', 'resolve_p99_ms', 'samples'])}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
