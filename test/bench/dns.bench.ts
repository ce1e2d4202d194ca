/**
 * `npm run bench -- dns [--json] [--samples N] [--warmup N] [--namespaces N] [--containers N]
 * [--engine 28.5.2|29.8.1|20.10] [--no-docker]` (root: network namespaces, dockerd).
 *
 * Two groups in one invocation:
 * - the names face alone on the real kernel (dns-resolve.ts): resolve p50/p99 of a kvnet name and of a
 *   forwarded name from a container, the upstream asked directly as the floor, and the resolver
 *   process's start time, RSS and listener-opening cost;
 * - names through Docker on three simulated hosts with real dockerds and agents (dns-docker.ts): resolve
 *   p50/p99 through Docker's resolver of a cross-host name and a forwarded name, Docker's own same-host
 *   lookup in the same run as the reference (and the ratio), kvnet's resolver asked directly, and the
 *   time from `docker run -d` returning to the name resolving on both other hosts, and from `docker rm -f`
 *   returning to it being gone on both.
 * Targets (issue 14), printed, not asserted: cross-host resolve p99 ≤ 5 ms and ≤ 1.5 × Docker's
 * same-host p99; name visible p99 ≤ 200 ms at 3 hosts; name gone p99 ≤ 1 s. Prints tables, or with
 * --json one object per case on stdout and nothing else (progress on stderr).
 */

import type { DockerEngineName } from '../support/docker-engines.ts';
import { benchDockerNames } from './dns-docker.ts';
import { benchResolve, type BenchRow } from './dns-resolve.ts';
import { printRows, runBench } from './report.ts';

interface Options {
  json: boolean;
  samples: number;
  warmup: number;
  namespaces: number;
  containers: number;
  engine: DockerEngineName;
  docker: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, samples: 1000, warmup: 100, namespaces: 20, containers: 20, engine: '28.5.2', docker: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') o.json = true;
    else if (a === '--samples') o.samples = Number(argv[++i]);
    else if (a === '--warmup') o.warmup = Number(argv[++i]);
    else if (a === '--namespaces') o.namespaces = Number(argv[++i]);
    else if (a === '--containers') o.containers = Number(argv[++i]);
    else if (a === '--engine') o.engine = argv[++i] as DockerEngineName;
    else if (a === '--no-docker') o.docker = false;
    else throw new Error(`unknown option ${a}; usage: dns [--json] [--samples N] [--warmup N] [--namespaces N] [--containers N] [--engine 28.5.2|29.8.1|20.10] [--no-docker]`);
  }
  for (const [k, v] of Object.entries({ samples: o.samples, warmup: o.warmup, namespaces: o.namespaces, containers: o.containers })) {
    if (!Number.isInteger(v) || v < 0 || ((k === 'samples' || k === 'containers') && v < 1)) throw new Error(`--${k} must be a non-negative integer${k === 'samples' || k === 'containers' ? ' ≥ 1' : ''}, not ${v}`);
  }
  if (!['28.5.2', '29.8.1', '20.10'].includes(o.engine)) throw new Error(`--engine must be 28.5.2, 29.8.1 or 20.10, not ${o.engine}`);
  return o;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('the dns benchmark needs root (network namespaces)\n');
    process.exit(2);
  }
  const progress = (m: string): void => void process.stderr.write(`${m}\n`);
  const rows = await benchResolve({ ...options, progress });
  const dockerRows: BenchRow[] = options.docker ? await benchDockerNames({ ...options, progress }) : [];
  if (options.json) {
    for (const r of [...rows, ...dockerRows]) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const show = (r: BenchRow, keys: string[]): string => keys.map((k) => `${k}=${r[k]}`).join('  ');
  const lines = ['dns: the names face on the real kernel (one simulated host, no Docker)'];
  for (const r of rows) {
    if (r.case === 'resolver') lines.push(`resolver   ${show(r, ['start_bundle_ms', 'rss_bundle_mib', 'start_tsx_ms', 'rss_tsx_mib', 'listener_open_p50_ms', 'namespaces', 'open_namespaces_ms', 'open_per_namespace_ms'])}`);
    else lines.push(`${String(r.impl).padEnd(16)} ${String(r.name).padEnd(10)} ${show(r, ['resolve_p50_ms', 'resolve_p99_ms', 'samples'])}`);
  }
  process.stdout.write(`${lines.join('\n')}\n\n`);
  if (!options.docker) return;
  const docker = String(dockerRows[0]?.docker ?? options.engine);
  printRows(
    dockerRows.filter((r) => r.resolve_p50_ms !== undefined),
    false,
    {
      title: `dns through Docker ${docker}: resolve from a container on h2, via Docker's resolver 127.0.0.11 unless kvnet-direct (3 simulated hosts)`,
      columns: ['impl', 'name', 'resolve_p50_ms', 'resolve_p99_ms', 'samples'],
      width: (c) => (c === 'impl' ? 17 : c === 'name' ? 12 : 16),
      notes: ['targets: kvnet cross-host resolve_p99_ms ≤ 5 and ratio (kvnet cross-host / docker-embedded same-host) ≤ 1.5'],
    },
  );
  printRows(
    dockerRows.filter((r) => r.name_visible_p99_ms !== undefined),
    false,
    {
      title: `\nnames appearing and going away across hosts (Docker ${docker}, 3 hosts; observed from h2 and h3 through Docker's resolver)`,
      columns: ['containers', 'name_visible_p50_ms', 'name_visible_p99_ms', 'name_gone_p50_ms', 'name_gone_p99_ms', 'name_gone_from_start_p99_ms'],
      width: (c) => c.length + 2,
      notes: ['targets: name_visible_p99_ms ≤ 200, name_gone_p99_ms ≤ 1000 (from the docker command returning; from_start: from its start)'],
    },
  );
}

runBench(main);
