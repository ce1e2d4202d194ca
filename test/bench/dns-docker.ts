/**
 * Names across hosts through Docker's own path, measured (the `dns` suite's Docker group): three
 * simulated hosts, each with a real dockerd (28.5.2 by default) started with `--dns 169.254.53.53` (what
 * daemon.json's `dns` does) and seeing a sysfs of its own namespace (dockerd.ts `ownSysfs`), and a real
 * `kvnet agent --docker-plugin` run from the bundle (as a deployment runs it; its resolver process is the
 * bundled `kvnet-resolver.mjs`), one embedded store, a DNS server in the "outside" namespace as the
 * upstream (`--dns-upstream`). One network `bench`; t1 on h1, c2 and c2b on h2, c3 on h3.
 *
 * - resolve (sequential UDP queries from a long-lived client in c2's network namespace to Docker's
 *   resolver 127.0.0.11, the address a container's resolv.conf names; the cases take turns in rounds):
 *   `kvnet cross-host` t1 (Docker does not know it, forwards it to kvnet's resolver over the Join's
 *   route), `kvnet forwarded` an outside name (Docker → kvnet → the upstream), `docker-embedded
 *   same-host` c2b (Docker answers it itself: the reference), `docker-embedded forwarded` the outside
 *   name from c2x, a container on h2 whose `--dns` is the upstream itself (Docker's own cost of
 *   forwarding any name, with no kvnet in the path); `kvnet-direct cross-host`: t1 asked of
 *   169.254.53.53 directly (kvnet's share of the first case);
 * - visibility (`--containers` samples): `docker run -d --name vN --network bench` on h1; clients in c2
 *   (h2) and c3 (h3) ask Docker's resolver for vN every 5 ms from before the run; name_visible = from
 *   `docker run -d` returning to the later of the two first answers holding vN's address (0 when both came
 *   before the command returned); then `docker rm -f vN`, and name_gone = from `docker rm -f` returning to
 *   the later of the two first answers without it (name_gone_from_start_ms: from the command's start).
 */

import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startDockerd, type Dockerd } from '../support/dockerd.ts';
import type { DockerEngineName } from '../support/docker-engines.ts';
import { UPSTREAM_ANSWER } from '../support/dns-upstream-server.ts';
import { DnsProbe } from '../support/names-fixture.ts';
import { makeTempDir, removeTempDir, REPO_ROOT, run, runId, startProcess, waitFor, type ManagedProcess } from '../support/process.ts';
import { createSimNetwork, OUTSIDE_ADDRESS, type SimNetwork } from '../support/sim-hosts.ts';
import { percentile, type BenchRow } from './dns-resolve.ts';

const RESOLVER = '169.254.53.53';
const DOCKER_RESOLVER = '127.0.0.11';
const HOSTS = 3;
const ROUNDS = 10;
const READY_TIMEOUT_MS = 120_000;
const VISIBLE_TIMEOUT_MS = 60_000;
/** How often the visibility clients ask. */
const POLL_MS = 5;
const BUNDLE_NODE_FLAGS = ['--max-semi-space-size=1'];
const PROBE = join(REPO_ROOT, 'test/support/dns-probe.ts');
const UPSTREAM_SERVER = join(REPO_ROOT, 'test/support/dns-upstream-server.ts');
const round2 = (x: number): number => Math.round(x * 100) / 100;

export interface DockerDnsBenchOptions {
  readonly engine: DockerEngineName;
  /** Queries per resolve case after the warm-up. */
  readonly samples: number;
  readonly warmup: number;
  /** Containers started and removed for the visibility figures. */
  readonly containers: number;
  readonly progress?: (msg: string) => void;
}

export async function benchDockerNames(options: DockerDnsBenchOptions): Promise<BenchRow[]> {
  const progress = options.progress ?? (() => {});
  const id = runId();
  const dir = makeTempDir(`dns-bench-${id}`);
  const bundleDir = join(REPO_ROOT, 'dist', `.bench-dns-${id}`);
  const removeBundle = (): void => rmSync(bundleDir, { recursive: true, force: true });
  process.once('exit', removeBundle);
  let sim: SimNetwork | undefined;
  let upstream: ManagedProcess | undefined;
  const dockerds: Dockerd[] = [];
  const agents: ManagedProcess[] = [];
  const probes: DnsProbe[] = [];
  const rows: BenchRow[] = [];
  try {
    progress(`building the agent bundle in ${bundleDir}`);
    mkdirSync(bundleDir, { recursive: true });
    const bundle = join(bundleDir, 'kvnet.mjs');
    await run(process.execPath, [join(REPO_ROOT, 'scripts', 'build.mjs'), bundle], { timeoutMs: 300_000 });
    sim = await createSimNetwork({ hosts: HOSTS, prefix: id, outside: true });
    upstream = startProcess('dns-upstream', process.execPath, ['--import', 'tsx', UPSTREAM_SERVER, OUTSIDE_ADDRESS, '53'], { netns: sim.outside!.name, cwd: REPO_ROOT });
    for (const [i, h] of sim.hosts.entries()) {
      progress(`dockerd ${options.engine} and a kvnet agent on ${h.name}`);
      const d = await startDockerd({ host: h, runId: id, engine: options.engine, ownSysfs: true, extraArgs: ['--dns', RESOLVER] });
      dockerds.push(d);
      const node = `h${i + 1}`;
      agents.push(startProcess(`agent-${id}-${node}`, process.execPath, [
        ...BUNDLE_NODE_FLAGS, bundle, 'agent',
        '--cluster-store', `local://${dir}/store.db`, '--cluster-advertise', 'eth0', '--node-name', node,
        '--state-dir', join(dir, `state-${node}`), '--socket', join(dir, `${node}.sock`), '--ttl', '10s',
        '--name-prefix', `${id}${i + 1}`, '--gateway-bridge', 'none', '--metrics-addr', 'off',
        '--docker-plugin', join(d.pluginDir, 'kvnet.sock'), '--docker-socket', d.socket, '--dns-upstream', OUTSIDE_ADDRESS,
      ], { netns: h.name, cwd: REPO_ROOT, logFile: join(dir, `agent-${node}.log`) }));
    }
    for (const a of agents) {
      await waitFor(`${a.name} ready`, () => {
        if (a.child.exitCode !== null) throw new Error(a.log().slice(-2000));
        return a.log().includes('"msg":"agent ready"');
      }, READY_TIMEOUT_MS, 100);
    }
    await waitFor('the upstream DNS server', () => upstream!.log().includes('listening'), 30_000, 100);
    const [d1, d2, d3] = dockerds as [Dockerd, Dockerd, Dockerd];
    const version = await d1.dockerOk('version', '--format', '{{.Server.Version}}');
    await d1.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.91.0.0/22', 'bench');
    for (const d of [d2, d3]) await waitFor(`bench on ${d.host.name}`, async () => (await d.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes('bench'), READY_TIMEOUT_MS, 100);
    const start = async (d: Dockerd, name: string): Promise<string> => {
      await d.dockerOk('run', '-d', '--name', name, '--network', 'bench', d.image, 'sleep', '36000');
      return d.dockerOk('inspect', '-f', '{{.NetworkSettings.Networks.bench.IPAddress}}', name);
    };
    const t1 = await start(d1, 't1');
    const c2b = await start(d2, 'c2b');
    await start(d2, 'c2');
    await start(d3, 'c3');
    // Docker's own forwarding, without kvnet in the path: a container whose --dns is the upstream itself
    await d2.dockerOk('run', '-d', '--name', 'c2x', '--network', 'bench', '--dns', OUTSIDE_ADDRESS, d2.image, 'sleep', '36000');
    const probeIn = async (d: Dockerd, container: string): Promise<DnsProbe> => {
      const pid = await d.dockerOk('inspect', '-f', '{{.State.Pid}}', container);
      const child = spawn('nsenter', ['-t', pid, '-n', process.execPath, '--import', 'tsx', PROBE], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
      const p = new DnsProbe(child);
      probes.push(p);
      await p.request({ op: 'raw', transport: 'udp', hex: '', server: '127.0.0.1', port: 9, timeoutMs: 1 });
      return p;
    };
    const p2 = await probeIn(d2, 'c2');
    const p3 = await probeIn(d3, 'c3');
    const p2x = await probeIn(d2, 'c2x');
    // t1's name is known everywhere before measuring
    await p2.request({ op: 'wait', server: DOCKER_RESOLVER, name: 't1', type: 1, ip: t1, timeoutMs: VISIBLE_TIMEOUT_MS });

    // ---- resolve latency through Docker's resolver
    const cases = [
      { impl: 'kvnet', name: 'cross-host', probe: p2, req: { server: DOCKER_RESOLVER, name: 't1' }, want: t1, samples: [] as number[] },
      { impl: 'kvnet', name: 'forwarded', probe: p2, req: { server: DOCKER_RESOLVER, name: 'www.up.test' }, want: UPSTREAM_ANSWER, samples: [] as number[] },
      { impl: 'docker-embedded', name: 'same-host', probe: p2, req: { server: DOCKER_RESOLVER, name: 'c2b' }, want: c2b, samples: [] as number[] },
      { impl: 'docker-embedded', name: 'forwarded', probe: p2x, req: { server: DOCKER_RESOLVER, name: 'www.up.test' }, want: UPSTREAM_ANSWER, samples: [] as number[] },
      { impl: 'kvnet-direct', name: 'cross-host', probe: p2, req: { server: RESOLVER, name: 't1' }, want: t1, samples: [] as number[] },
    ];
    for (const c of cases) {
      const a = await c.probe.query(c.req.name, 1, 'udp', { server: c.req.server });
      const got = (a.answers ?? []).map((x) => x.data);
      if (!got.includes(c.want)) throw new Error(`${c.impl} ${c.name}: ${c.req.name} via ${c.req.server} answered ${JSON.stringify(a)}, not ${c.want}`);
    }
    const perRound = Math.max(1, Math.ceil(options.samples / ROUNDS));
    progress(`resolve: ${cases.length} cases × ${ROUNDS} rounds × ${perRound} queries from c2 (h2)`);
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of cases) {
        const r = await c.probe.request({ op: 'bench', type: 1, count: perRound, warmup: round === 0 ? options.warmup : 0, timeoutMs: 2000, ...c.req });
        if (!r.ok || (r.failures ?? 0) > 0) throw new Error(`${c.impl}/${c.name}: ${r.failures ?? '?'} queries failed (${r.error ?? ''})`);
        c.samples.push(...r.samplesMs!);
      }
    }
    for (const c of cases) {
      rows.push({ suite: 'dns', impl: c.impl, docker: version, hosts: HOSTS, name: c.name, resolve_p50_ms: round2(percentile(c.samples, 50)), resolve_p99_ms: round2(percentile(c.samples, 99)), samples: c.samples.length });
    }
    const cross = rows.find((r) => r.impl === 'kvnet' && r.name === 'cross-host')!;
    const same = rows.find((r) => r.impl === 'docker-embedded' && r.name === 'same-host')!;
    rows.push({ suite: 'dns', impl: 'ratio', docker: version, anchor: 'docker-embedded same-host', name: 'cross-host', resolve_p50_ms: round2(Number(cross.resolve_p50_ms) / Number(same.resolve_p50_ms)), resolve_p99_ms: round2(Number(cross.resolve_p99_ms) / Number(same.resolve_p99_ms)) });

    // ---- a new name visible on the other hosts, a removed one gone
    const visible: number[] = [];
    const gone: number[] = [];
    const goneFromStart: number[] = [];
    progress(`visibility: ${options.containers} containers started on h1 and removed, watched from h2 and h3`);
    for (let i = 0; i < options.containers; i++) {
      const name = `v${i}`;
      const watch = (want: 'present' | 'absent', ip?: string) => Promise.all([p2, p3].map((p) => p.request({ op: 'wait', server: DOCKER_RESOLVER, name, type: 1, want, ...(ip ? { ip } : {}), intervalMs: POLL_MS, timeoutMs: VISIBLE_TIMEOUT_MS })));
      const seen = watch('present');
      await d1.dockerOk('run', '-d', '--name', name, '--network', 'bench', d1.image, 'sleep', '36000');
      const ran = Date.now();
      const at = await seen;
      if (at.some((a) => !a.ok)) throw new Error(`${name} did not become visible: ${JSON.stringify(at)}`);
      visible.push(Math.max(0, Math.max(...at.map((a) => a.at!)) - ran));
      const removing = Date.now();
      await d1.dockerOk('rm', '-f', name);
      const removed = Date.now();
      const away = await watch('absent');
      if (away.some((a) => !a.ok)) throw new Error(`${name} did not go away: ${JSON.stringify(away)}`);
      const last = Math.max(...away.map((a) => a.at!));
      gone.push(Math.max(0, last - removed));
      goneFromStart.push(last - removing);
    }
    rows.push({
      suite: 'dns', impl: 'kvnet', docker: version, hosts: HOSTS, containers: options.containers,
      name_visible_p50_ms: round2(percentile(visible, 50)), name_visible_p99_ms: round2(percentile(visible, 99)),
      name_gone_p50_ms: round2(percentile(gone, 50)), name_gone_p99_ms: round2(percentile(gone, 99)),
      name_gone_from_start_p99_ms: round2(percentile(goneFromStart, 99)),
    });
    return rows;
  } finally {
    for (const p of probes) p.child.kill('SIGKILL');
    for (const d of dockerds) await d.stop().catch(() => undefined);
    for (const a of agents) await a.stop(10_000).catch(() => undefined);
    // agents leave their resolvers answering by design: the run's temp dir going away ends them; do it now
    const { stopResolver } = await import('../../packages/agent/src/names/resolver-control.ts');
    for (let i = 1; i <= HOSTS; i++) await stopResolver(join(dir, `h${i}-resolver.sock`)).catch(() => undefined);
    await upstream?.kill();
    await sim?.destroy().catch(() => undefined);
    removeTempDir(dir);
    removeBundle();
  }
}
