/**
 * `npm run bench -- dataplane [--json] [--reps N] [--peers 100,1000,10000]` (root: network namespaces).
 *
 * On one simulated host with one overlay network and one local endpoint, per peer count N, each a
 * median over `--reps` repetitions after one warm-up, every figure a full `apply()` (read → plan →
 * batches) as the agent will call it:
 * - program_ms: 0 → N remote peers;     remove_ms: N → 0 peers;
 * - attach_ms: one more endpoint (veth pair into a container) with N peers present;
 * - add_one_ms: one more peer among N (the common case after a store event);
 * - noop_ms: nothing changed (the cost of a resync); read_ms: `readState()` alone.
 * Prints a table, or with --json one object per N on stdout and nothing else (progress goes to stderr).
 */

import { execFileSync } from 'node:child_process';
import { runId } from '../support/process.ts';
import { createSimNetwork, type SimContainer } from '../support/sim-hosts.ts';
import { Dataplane, macFromIpv4, type DesiredNetwork, type DesiredPeer, type DesiredState } from '../../packages/dataplane/src/index.ts';

const DEFAULT_PEERS = [100, 1_000, 10_000];
const DEFAULT_REPS = 5;
/** Peers are spread over this many remote VTEPs (hosts). */
const REMOTE_HOSTS = 100;
const NETWORK_ID = 'b'.repeat(64);
const FIRST_PEER = 0x0a810000; // 10.129.0.0

interface Options {
  json: boolean;
  reps: number;
  peers: number[];
}

function parseArgs(argv: string[]): Options {
  const options: Options = { json: false, reps: DEFAULT_REPS, peers: DEFAULT_PEERS };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') options.json = true;
    else if (a === '--reps') options.reps = Number(argv[++i]);
    else if (a === '--peers') options.peers = String(argv[++i]).split(',').map(Number);
    else throw new Error(`unknown option ${a}; usage: dataplane [--json] [--reps N] [--peers 100,1000,10000]`);
  }
  if (!Number.isInteger(options.reps) || options.reps < 1) throw new Error('--reps must be a positive integer');
  if (options.peers.some((n) => !Number.isInteger(n) || n < 1 || n > 100_000)) throw new Error('--peers must be integers in 1…100000');
  return options;
}

function peerList(n: number): DesiredPeer[] {
  return Array.from({ length: n }, (_, i) => {
    const ip = FIRST_PEER + i;
    return {
      ip: [ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255].join('.'),
      mac: macFromIpv4(ip),
      vtep: `198.18.1.${(i % REMOTE_HOSTS) + 1}`,
    };
  });
}

function state(peers: DesiredPeer[], containers: SimContainer[]): DesiredState {
  const network: DesiredNetwork = {
    id: NETWORK_ID,
    vni: 7001,
    subnets: [{ cidr: '10.128.0.0/9', gateway: '10.128.0.1' }],
    internal: true,
    endpoints: containers.map((c, i) => ({ id: `${i + 1}`.repeat(64), address: `10.128.0.${i + 2}/9`, sandbox: { path: c.path, ifname: 'eth0' } })),
    peers,
  };
  return { networks: [network] };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const round1 = (x: number): number => Math.round(x * 10) / 10;

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('the dataplane benchmark needs root (network namespaces)\n');
    process.exit(2);
  }
  const progress = (msg: string): void => void process.stderr.write(`${msg}\n`);
  const sim = await createSimNetwork({ hosts: 1, prefix: runId() });
  const host = sim.hosts[0]!;
  const dp = new Dataplane({ namePrefix: `${sim.prefix}1`, hostNetns: host.name, vtep: host.address, gatewayBridge: false });
  const results: Record<string, number>[] = [];
  try {
    const c1 = await sim.addContainer(host, 'c1');
    const c2 = await sim.addContainer(host, 'c2');
    const timed = async (desired: DesiredState): Promise<number> => {
      const started = performance.now();
      const report = await dp.apply(desired);
      const ms = performance.now() - started;
      if (report.errors.length > 0) throw new Error(`apply failed: ${report.errors.map((e) => e.message).join('; ')}`);
      return ms;
    };
    for (const n of options.peers) {
      const peers = peerList(n + 1);
      const all = peers.slice(0, n);
      const figures: Record<string, number[]> = { program: [], remove: [], attach: [], add_one: [], noop: [], read: [] };
      for (let rep = 0; rep <= options.reps; rep++) {
        const sample: Record<string, number> = {};
        await timed(state([], [c1]));
        sample.program = await timed(state(all, [c1]));
        sample.noop = await timed(state(all, [c1]));
        const readStarted = performance.now();
        await dp.readState({ iptables: false });
        sample.read = performance.now() - readStarted;
        sample.add_one = await timed(state(peers, [c1]));
        sample.attach = await timed(state(peers, [c1, c2]));
        await timed(state(peers, [c1]));
        sample.remove = await timed(state([], [c1]));
        if (rep === 0) continue; // warm-up
        for (const [k, v] of Object.entries(sample)) figures[k]!.push(v);
      }
      const row: Record<string, number> = { peers: n };
      for (const k of ['program', 'remove', 'attach', 'add_one', 'noop', 'read']) row[`${k}_ms`] = round1(median(figures[k]!));
      for (const k of ['program', 'remove', 'attach']) {
        row[`${k}_min_ms`] = round1(Math.min(...figures[k]!));
        row[`${k}_max_ms`] = round1(Math.max(...figures[k]!));
      }
      row.reps = options.reps;
      results.push(row);
      progress(`peers=${n}: program ${row.program_ms} ms, remove ${row.remove_ms} ms, attach ${row.attach_ms} ms`);
    }
  } finally {
    await dp.destroyAll().catch((err: unknown) => progress(`cleanup: ${String(err)}`));
    await sim.destroy();
  }

  if (options.json) {
    for (const r of results) process.stdout.write(`${JSON.stringify({ suite: 'dataplane', ...r })}\n`);
    return;
  }
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8', timeout: 5000 }).trim();
  const iproute = execFileSync('ip', ['-V'], { encoding: 'utf8', timeout: 5000 }).trim();
  const cols = ['peers', 'program_ms', 'remove_ms', 'attach_ms', 'add_one_ms', 'noop_ms', 'read_ms'];
  const lines = [
    `dataplane: one overlay namespace, medians of ${options.reps} after a warm-up (kernel ${kernel}, ${iproute})`,
    cols.map((c) => c.padStart(11)).join(''),
    ...results.map((r) => cols.map((c) => String(r[c]).padStart(11)).join('')),
    '(program/remove: 0 ↔ N remote peers; attach: one endpoint with N peers present; add_one: one more peer; noop: apply with no change; read: readState)',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
