/**
 * The names face measured on the real kernel, without an agent or Docker (the stage of
 * test/support/names-fixture.ts): {@link benchResolve} returns one row per measured case, with the
 * keys of the `dns` suite (see the root README's Benchmarks) where they apply. `npm run bench -- dns` calls it;
 * a later Docker-based dns suite can call it too and add its own rows.
 *
 * - `name: 'table'`: a kvnet name (an endpoint on another host) asked from a container, over its kvnet
 *   interface, to the resolver in that network's overlay namespace;
 * - `name: 'forwarded'`: an outside name through the same path, forwarded to the upstream server;
 * - `impl: 'upstream-direct'`: the same outside name asked of the upstream directly from the host
 *   namespace (the floor a forwarded name cannot beat: one more hop and the forwarder's work);
 * - `case: 'resolver'`: the resolver process itself: start (spawn → answering on its socket) and RSS,
 *   as a bundle (as production would run it) and through tsx; time to open listeners in `namespaces` more
 *   overlay namespaces in one update.
 *
 * Each resolve figure: sequential UDP queries from one long-lived client, after a warm-up, the cases
 * taking turns in rounds; p50/p99 of the round trip as the client sees it.
 */

import { build } from 'esbuild';
import { join } from 'node:path';
import { pino } from 'pino';
import { buildNameTable, localSandboxes } from '../../packages/agent/src/names/name-table.ts';
import type { Names, NamespaceListener } from '../../packages/agent/src/names/names.ts';
import { startNames } from '../../packages/agent/src/names/names-client.ts';
import { createNamesFixture, UPSTREAM_ADDRESS, type DnsProbe, type NamesFixture } from '../support/names-fixture.ts';
import { makeTempDir, REPO_ROOT, run, runId } from '../support/process.ts';

export interface ResolveBenchOptions {
  /** Queries per case after the warm-up. */
  readonly samples: number;
  readonly warmup: number;
  /** Extra empty namespaces to open listeners in, in one update. */
  readonly namespaces: number;
  readonly progress?: (msg: string) => void;
}

export type BenchRow = Record<string, string | number>;

const round2 = (x: number): number => Math.round(x * 100) / 100;
/** The resolve cases take turns this many times. */
const ROUNDS = 10;

export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** One resolve case: queries sent by `probe` with `req` (name, server), its samples collected in `samples`. */
export interface ResolveCase {
  readonly impl: string;
  readonly name: string;
  readonly probe: Pick<DnsProbe, 'request'>;
  readonly req: Record<string, unknown>;
  readonly samples: number[];
}

/**
 * Sends `samples` queries per case, the cases taking turns over {@link ROUNDS} rounds (so a slow moment of
 * the shared machine falls on every case alike); the first round is preceded by `warmup` unmeasured ones.
 * Any failed query fails the benchmark: a figure with failures left out would flatter.
 */
export async function sampleInRounds(cases: readonly ResolveCase[], samples: number, warmup: number): Promise<void> {
  const perRound = Math.max(1, Math.ceil(samples / ROUNDS));
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of cases) {
      const r = await c.probe.request({ op: 'bench', type: 1, count: perRound, warmup: round === 0 ? warmup : 0, timeoutMs: 2000, ...c.req });
      if (!r.ok || (r.failures ?? 0) > 0) throw new Error(`${c.impl}/${c.name}: ${r.failures ?? '?'} queries failed (${r.error ?? ''})`);
      c.samples.push(...r.samplesMs!);
    }
  }
}

/** Bundles resolver-main.ts the way a production build would (plain JavaScript, no loader). */
async function bundleResolver(dir: string): Promise<string> {
  const out = join(dir, 'kvnet-resolver.mjs');
  await build({
    entryPoints: [join(REPO_ROOT, 'packages/agent/src/names/resolver-main.ts')],
    outfile: out,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
    banner: { js: "import { createRequire as __kvnetRequire } from 'node:module'; const require = __kvnetRequire(import.meta.url);" },
  });
  return out;
}

async function startMeasured(fx: NamesFixture, command: string[], dir: string): Promise<{ names: Names; startMs: number }> {
  const t0 = performance.now();
  const names = await startNames({
    logger: pino({ level: 'silent' }),
    socketPath: join(dir, 'resolver.sock'),
    resolverLog: join(dir, 'resolver.log'),
    resolverCommand: command,
    upstreams: [UPSTREAM_ADDRESS],
    hostListener: true,
  });
  const startMs = performance.now() - t0;
  fx.track(names.resolverPid);
  return { names, startMs };
}

export async function benchResolve(options: ResolveBenchOptions): Promise<BenchRow[]> {
  const progress = options.progress ?? (() => {});
  const fx = await createNamesFixture(runId());
  const rows: BenchRow[] = [];
  try {
    const dir = makeTempDir('names-bench');
    const view = fx.view();
    const table = buildNameTable(view, localSandboxes(view, 'h1'));
    const nsenter = ['nsenter', `--net=${fx.host.path}`];

    // The resolver through tsx (development), then as a bundle (production): start time and RSS.
    const tsx = await startMeasured(fx, fx.resolverCommand, join(dir, 'tsx'));
    await tsx.names.update(table, fx.listeners);
    const tsxStatus = await tsx.names.status();
    await tsx.names.shutdown();
    const bundle = await bundleResolver(dir);
    const prod = await startMeasured(fx, [...nsenter, process.execPath, '--max-semi-space-size=1', bundle], join(dir, 'bundle'));
    const names = prod.names;
    try {
      const report = await names.update(table, fx.listeners);
      const opened = report.listeners.filter((l) => l.openedMs !== undefined).map((l) => l.openedMs!);

      // Resolve latency first, on a quiet resolver; the cases take turns in rounds, so drift in the
      // machine's load (it is shared) hits them alike.
      const client = await fx.probe('ca1');
      const hostClient = await fx.probe('h1');
      const cases: ResolveCase[] = [
        { impl: 'kvnet', name: 'table', probe: client, req: { name: 'r1' }, samples: [] },
        { impl: 'kvnet', name: 'forwarded', probe: client, req: { name: 'www.up.test' }, samples: [] },
        { impl: 'upstream-direct', name: 'forwarded', probe: hostClient, req: { name: 'www.up.test', server: UPSTREAM_ADDRESS }, samples: [] },
      ];
      await sampleInRounds(cases, options.samples, options.warmup);
      for (const c of cases) {
        const xs = c.samples;
        rows.push({ suite: 'dns', impl: c.impl, docker: 'none', name: c.name, resolve_p50_ms: round2(percentile(xs, 50)), resolve_p99_ms: round2(percentile(xs, 99)), samples: xs.length });
        progress(`${c.impl} ${c.name}: p50 ${round2(percentile(xs, 50))} ms, p99 ${round2(percentile(xs, 99))} ms over ${xs.length}`);
      }

      // More namespaces in one update: what a host with many networks pays when the resolver starts.
      const extra: NamespaceListener[] = [];
      for (let i = 0; i < options.namespaces; i++) {
        const ns = `${fx.prefix}z${i}`;
        await run('ip', ['netns', 'add', ns]);
        extra.push({ network: `z${i}`, netns: `/run/netns/${ns}` });
      }
      const t0 = performance.now();
      const more = await names.update(table, [...fx.listeners, ...extra]);
      const moreMs = performance.now() - t0;
      const failed = more.listeners.filter((l) => l.state !== 'listening');
      if (failed.length > 0) throw new Error(`listeners failed: ${failed.map((l) => `${l.netns}: ${l.error}`).join('; ')}`);
      const status = await names.status();
      rows.unshift({
        suite: 'dns', impl: 'kvnet', case: 'resolver',
        start_tsx_ms: round2(tsx.startMs), rss_tsx_mib: tsxStatus.rssMiB,
        start_bundle_ms: round2(prod.startMs), rss_bundle_mib: status.rssMiB,
        listener_open_p50_ms: round2(percentile(opened, 50)),
        namespaces: options.namespaces, open_namespaces_ms: round2(moreMs), open_per_namespace_ms: round2(moreMs / Math.max(1, options.namespaces)),
      });
      progress(`resolver: bundle start ${round2(prod.startMs)} ms, RSS ${status.rssMiB} MiB (after ${options.namespaces + fx.listeners.length + 1} listeners and the queries); ${options.namespaces} namespaces opened in ${round2(moreMs)} ms`);
    } finally {
      await names.shutdown().catch(() => undefined);
    }
  } finally {
    await fx.destroy();
  }
  return rows;
}
