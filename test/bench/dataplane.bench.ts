/**
 * `npm run bench -- dataplane [--json] [--reps N] [--peers 100,1000,10000] [--families ipv4,ipv6]`
 * (root: network namespaces).
 *
 * On one simulated host with one overlay network and one local endpoint, per address family and peer
 * count N, each a median over `--reps` repetitions after one warm-up, every figure a full `apply()`
 * (read → plan → batches) as the agent will call it. Family `ipv4`: an IPv4 network, one ARP entry per
 * peer; `ipv6`: an IPv6-only network, one NDP entry per peer (MACs by the IPv6 rule). Both have one FDB
 * entry per peer.
 * - program_ms: 0 → N remote peers;     remove_ms: N → 0 peers;
 * - attach_ms: one more endpoint (veth pair into a container) with N peers present;
 * - add_one_ms: one more peer among N (the common case after a store event);
 * - noop_ms: nothing changed (the cost of a resync); read_ms: `readState()` alone.
 * Prints a table, or with --json one object per N on stdout and nothing else (progress goes to stderr).
 */

import { printRows, runBench } from './report.ts';
import { execFileSync } from 'node:child_process';
import { runId } from '../support/process.ts';
import { createSimNetwork, type SimContainer } from '../support/sim-hosts.ts';
import { endpointMac, formatIp, macFromIpv4, parseIp } from '../../packages/netaddr/src/index.ts';
import { Dataplane, type DesiredNetwork, type DesiredPeer, type DesiredState } from '../../packages/dataplane/src/index.ts';

const DEFAULT_PEERS = [100, 1_000, 10_000];
const DEFAULT_REPS = 5;
/** Peers are spread over this many remote VTEPs (hosts). */
const REMOTE_HOSTS = 100;
const NETWORK_ID = 'b'.repeat(64);
const FIRST_PEER = 0x0a810000; // 10.129.0.0
const ALL_FAMILIES = ['ipv4', 'ipv6'] as const;
type FamilyName = (typeof ALL_FAMILIES)[number];
/** The IPv6 network: peers from fd00:80::1:0 upward, endpoints at fd00:80::2, …; the gateway fd00:80::1. */
const V6_SUBNET = 'fd00:80::/64';
const V6_FIRST_PEER = parseIp('fd00:80::1:0')!.value;

interface Options {
  json: boolean;
  reps: number;
  peers: number[];
  families: FamilyName[];
}

function parseArgs(argv: string[]): Options {
  const options: Options = { json: false, reps: DEFAULT_REPS, peers: DEFAULT_PEERS, families: [...ALL_FAMILIES] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') options.json = true;
    else if (a === '--reps') options.reps = Number(argv[++i]);
    else if (a === '--peers') options.peers = String(argv[++i]).split(',').map(Number);
    else if (a === '--families') options.families = String(argv[++i]).split(',') as FamilyName[];
    else throw new Error(`unknown option ${a}; usage: dataplane [--json] [--reps N] [--peers 100,1000,10000] [--families ipv4,ipv6]`);
  }
  if (!Number.isInteger(options.reps) || options.reps < 1) throw new Error('--reps must be a positive integer');
  if (options.peers.some((n) => !Number.isInteger(n) || n < 1 || n > 100_000)) throw new Error('--peers must be integers in 1…100000');
  if (options.families.some((f) => !ALL_FAMILIES.includes(f))) throw new Error('--families must be ipv4 and/or ipv6');
  return options;
}

function peerList(family: FamilyName, n: number): DesiredPeer[] {
  return Array.from({ length: n }, (_, i) => {
    const vtep = `198.18.1.${(i % REMOTE_HOSTS) + 1}`;
    if (family === 'ipv6') {
      const ip = { family: 6 as const, value: V6_FIRST_PEER + BigInt(i) };
      return { ipv6: formatIp(6, ip.value), mac: endpointMac({ ipv6: ip })!, vtep };
    }
    const ip = FIRST_PEER + i;
    return { ip: [ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255].join('.'), mac: macFromIpv4(ip), vtep };
  });
}

function state(family: FamilyName, peers: DesiredPeer[], containers: SimContainer[]): DesiredState {
  const id = (i: number): string => `${i + 1}`.repeat(64);
  const sandbox = (c: SimContainer) => ({ path: c.path, ifname: 'eth0' });
  const network: DesiredNetwork =
    family === 'ipv6'
      ? {
          id: NETWORK_ID,
          vni: 7001,
          subnets: [{ cidr: V6_SUBNET, gateway: 'fd00:80::1' }],
          internal: true,
          endpoints: containers.map((c, i) => ({ id: id(i), addressIPv6: `fd00:80::${i + 2}/64`, sandbox: sandbox(c) })),
          peers,
        }
      : {
          id: NETWORK_ID,
          vni: 7001,
          subnets: [{ cidr: '10.128.0.0/9', gateway: '10.128.0.1' }],
          internal: true,
          endpoints: containers.map((c, i) => ({ id: id(i), address: `10.128.0.${i + 2}/9`, sandbox: sandbox(c) })),
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
  const results: Record<string, number | string>[] = [];
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
    // every family × peer count; the warm-up repetition absorbs the switch from one family's network to the other's
    for (const [family, n] of options.families.flatMap((f) => options.peers.map((p) => [f, p] as const))) {
      const peers = peerList(family, n + 1);
      const all = peers.slice(0, n);
      const figures: Record<string, number[]> = { program: [], remove: [], attach: [], add_one: [], noop: [], read: [] };
      for (let rep = 0; rep <= options.reps; rep++) {
        const sample: Record<string, number> = {};
        await timed(state(family, [], [c1]));
        sample.program = await timed(state(family, all, [c1]));
        sample.noop = await timed(state(family, all, [c1]));
        const readStarted = performance.now();
        await dp.readState({ iptables: false });
        sample.read = performance.now() - readStarted;
        sample.add_one = await timed(state(family, peers, [c1]));
        sample.attach = await timed(state(family, peers, [c1, c2]));
        await timed(state(family, peers, [c1]));
        sample.remove = await timed(state(family, [], [c1]));
        if (rep === 0) continue; // warm-up
        for (const [k, v] of Object.entries(sample)) figures[k]!.push(v);
      }
      const row: Record<string, number | string> = { peers: n, family };
      for (const k of ['program', 'remove', 'attach', 'add_one', 'noop', 'read']) row[`${k}_ms`] = round1(median(figures[k]!));
      for (const k of ['program', 'remove', 'attach']) {
        row[`${k}_min_ms`] = round1(Math.min(...figures[k]!));
        row[`${k}_max_ms`] = round1(Math.max(...figures[k]!));
      }
      row.reps = options.reps;
      results.push(row);
      progress(`${family} peers=${n}: program ${row.program_ms} ms, remove ${row.remove_ms} ms, attach ${row.attach_ms} ms`);
    }
  } finally {
    await dp.destroyAll().catch((err: unknown) => progress(`cleanup: ${String(err)}`));
    await sim.destroy();
  }

  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8', timeout: 5000 }).trim();
  const iproute = execFileSync('ip', ['-V'], { encoding: 'utf8', timeout: 5000 }).trim();
  printRows(results.map((r) => ({ suite: 'dataplane', ...r })), options.json, {
    title: `dataplane: one overlay namespace, medians of ${options.reps} after a warm-up (kernel ${kernel}, ${iproute})`,
    columns: ['family', 'peers', 'program_ms', 'remove_ms', 'attach_ms', 'add_one_ms', 'noop_ms', 'read_ms'],
    notes: [
      '(program/remove: 0 ↔ N remote peers; attach: one endpoint with N peers present; add_one: one more peer; noop: apply with no change; read: readState;',
      ' ipv4: ARP entries in an IPv4 network, ipv6: NDP entries in an IPv6-only network, one FDB entry per peer in both)',
    ],
  });
}

runBench(main);
