/**
 * The incremental path's planner as pure data: what the last full apply left + a change of peers →
 * lines. Played on the fake kernel, the lines must leave exactly what the full planner would (planning
 * the full desired state again finds nothing to do); what it cannot plan exactly it hands back.
 */

import test from 'ava';
import { resolveConfig } from '../src/config.ts';
import { resolveDesiredState } from '../src/desired-state.ts';
import { executePlan } from '../src/executor.ts';
import { Dataplane, type DataplaneConfig, type DesiredNetwork, type DesiredPeer, type DesiredState, type PeerDelta } from '../src/index.ts';
import { commitPeerDelta, planPeerDelta, programmedNetworkOf, type ProgrammedNetwork } from '../src/peer-delta.ts';
import { FakeKernel } from './fixtures/fake-kernel.ts';

const PREFIX = 'kt';
const HOST = 'host1';
const VTEP = '198.18.0.1';
const NET_A = 'a'.repeat(64);
const NET_B = 'b'.repeat(64);
const EP1 = '1'.repeat(64);
const CONFIG: DataplaneConfig = { namePrefix: PREFIX, hostNetns: HOST, vtep: VTEP, gatewayBridge: false };

const peer = (n: number, vtep = `198.18.0.${2 + (n % 5)}`): DesiredPeer => ({ ip: `10.0.${n >> 8}.${n & 255}`, mac: `02:42:0a:00:${(n >> 8).toString(16).padStart(2, '0')}:${(n & 255).toString(16).padStart(2, '0')}`, vtep });

function network(id: string, vni: number, peers: readonly DesiredPeer[]): DesiredNetwork {
  return {
    id,
    vni,
    subnets: [{ cidr: '10.0.0.0/16', gateway: '10.0.0.1' }],
    internal: true,
    endpoints: [{ id: id === NET_A ? EP1 : '2'.repeat(64), address: '10.0.255.2/16', sandbox: { path: '/run/netns/c1', ifname: id === NET_A ? 'eth0' : 'eth1' } }],
    peers,
  };
}

/** Applies `desired` fully on the fake kernel; returns the baseline the data plane would keep. */
async function fullApply(k: FakeKernel, dp: Dataplane, desired: DesiredState): Promise<Map<string, ProgrammedNetwork>> {
  const actual = { ...k.state(PREFIX, { kind: 'name', name: HOST }), sandboxes: { '/run/netns/c1': 'netns' as const } };
  const plan = dp.plan(desired, actual);
  const result = await executePlan(plan, { runner: k.runner });
  if (result.errors.length > 0 || plan.errors.length > 0) throw new Error([...plan.errors, ...result.errors].map((e) => e.message).join('\n'));
  return new Map(resolveDesiredState(desired, resolveConfig(CONFIG), actual).networks.map((n) => [n.id, programmedNetworkOf(n)]));
}

function replan(k: FakeKernel, dp: Dataplane, desired: DesiredState): string[] {
  const actual = { ...k.state(PREFIX, { kind: 'name', name: HOST }), sandboxes: { '/run/netns/c1': 'netns' as const } };
  return dp.plan(desired, actual).stages.flatMap((s) => s.batches.flatMap((b) => b.ops.map((o) => o.line)));
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('random changes of peers, applied on their own, leave what a full apply of the final state leaves', async (t) => {
  const config = resolveConfig(CONFIG);
  for (const seed of [1, 2, 3]) {
    const r = rng(seed);
    const k = new FakeKernel([HOST, 'c1']);
    const dp = new Dataplane(CONFIG);
    let peersA = new Map<number, DesiredPeer>(Array.from({ length: 40 }, (_, n) => [n, peer(n)]));
    let peersB = new Map<number, DesiredPeer>(Array.from({ length: 10 }, (_, n) => [100 + n, peer(100 + n)]));
    const state = (): DesiredState => ({ networks: [network(NET_A, 4097, [...peersA.values()]), network(NET_B, 4098, [...peersB.values()])] });
    const programmed = await fullApply(k, dp, state());
    for (let step = 0; step < 60; step++) {
      const deltas: PeerDelta[] = [];
      for (const [id, peers] of [[NET_A, peersA], [NET_B, peersB]] as const) {
        const next = new Map(peers);
        const remove: DesiredPeer[] = [];
        const add: DesiredPeer[] = [];
        for (let c = 0; c < Math.floor(r() * 4); c++) {
          const n = Math.floor(r() * 300);
          const was = next.get(n);
          if (was && r() < 0.5) {
            remove.push(was);
            next.delete(n);
          } else if (was) {
            const moved = peer(n, `198.18.1.${Math.floor(r() * 9) + 1}`);
            if (moved.vtep === was.vtep) continue;
            remove.push(was);
            add.push(moved);
            next.set(n, moved);
          } else if (!add.some((p) => p.ip === peer(n).ip)) {
            add.push(peer(n));
            next.set(n, peer(n));
          }
        }
        if (remove.length + add.length > 0) deltas.push({ network: id, remove, add });
        if (id === NET_A) peersA = next;
        else peersB = next;
      }
      const planned = planPeerDelta(deltas, programmed, config);
      if ('full' in planned) return t.fail(`seed ${seed} step ${step}: ${planned.full}`);
      t.true(planned.plan.stages.every((s) => s.name === 'configure'));
      const result = await executePlan(planned.plan, { runner: k.runner });
      t.deepEqual(result.errors, []);
      commitPeerDelta(programmed, planned);
      t.deepEqual(replan(k, dp, state()), [], `seed ${seed} step ${step}: the full planner finds nothing left to do`);
    }
  }
});

test('a change is exactly one replace per table per new peer, one delete per table per gone peer', (t) => {
  const config = resolveConfig(CONFIG);
  const net = resolveDesiredState({ networks: [network(NET_A, 4097, [peer(1), peer(2)])] }, config, { host: { netns: HOST, links: [] }, sandboxes: { '/run/netns/c1': 'netns' } }).networks[0]!;
  const programmed = new Map([[NET_A, programmedNetworkOf(net)]]);
  const planned = planPeerDelta([{ network: NET_A, remove: [peer(1), peer(2)], add: [peer(3), peer(2, '198.18.0.9')] }], programmed, config);
  if ('full' in planned) return t.fail(planned.full);
  const byTool = Object.fromEntries(planned.plan.stages[0]!.batches.map((b) => [b.tool, b.ops.map((o) => o.line)]));
  t.deepEqual(byTool, {
    ip: ['neigh del 10.0.0.1 dev vxlan0', 'neigh replace 10.0.0.3 lladdr 02:42:0a:00:00:03 dev vxlan0 nud permanent'],
    bridge: ['fdb del 02:42:0a:00:00:01 dev vxlan0 self', 'fdb replace 02:42:0a:00:00:02 dev vxlan0 dst 198.18.0.9 self permanent', 'fdb replace 02:42:0a:00:00:03 dev vxlan0 dst 198.18.0.5 self permanent'],
  });
  t.deepEqual(planned.plan.stages[0]!.batches.map((b) => b.netns), [{ kind: 'name', name: `${PREFIX}-${NET_A}` }, { kind: 'name', name: `${PREFIX}-${NET_A}` }]);
  commitPeerDelta(programmed, planned);
  t.deepEqual([...programmed.get(NET_A)!.fdb].sort(), [['02:42:0a:00:00:02', '198.18.0.9'], ['02:42:0a:00:00:03', '198.18.0.5']]);
});

test('what the full planner settles by age or refuses is handed back to it', (t) => {
  const config = resolveConfig(CONFIG);
  const net = resolveDesiredState({ networks: [network(NET_A, 4097, [peer(1), peer(2)])] }, config, { host: { netns: HOST, links: [] }, sandboxes: { '/run/netns/c1': 'netns' } }).networks[0]!;
  const programmed = new Map([[NET_A, programmedNetworkOf(net)]]);
  const full = (deltas: PeerDelta[]): string => {
    const r = planPeerDelta(deltas, programmed, config);
    return 'full' in r ? r.full : 'planned';
  };
  t.regex(full([{ network: NET_A, remove: [], add: [{ ...peer(9), ip: '10.0.0.1' }] }]), /10\.0\.0\.1 is already programmed/);
  t.regex(full([{ network: NET_A, remove: [], add: [{ ...peer(9), mac: peer(2).mac }] }]), /MAC 02:42:0a:00:00:02 is already programmed/);
  t.regex(full([{ network: NET_A, remove: [], add: [{ ...peer(9), ip: '10.0.255.2' }] }]), /local endpoint/);
  t.regex(full([{ network: NET_A, remove: [], add: [peer(9, VTEP)] }]), /own VTEP/);
  t.regex(full([{ network: NET_A, remove: [], add: [{ ...peer(9), ip: 'nonsense' }] }]), /not an IPv4 address/);
  t.regex(full([{ network: NET_A, remove: [], add: [peer(9, 'fd00::1')] }]), /not an IPv4 address/);
  t.regex(full([{ network: NET_A, remove: [peer(7)], add: [] }]), /not programmed/);
  t.regex(full([{ network: NET_A, remove: [peer(1, '198.18.0.4')], add: [] }]), /not programmed as 02:42:0a:00:00:01 → 198.18.0.4/);
  t.regex(full([{ network: NET_B, remove: [], add: [peer(9)] }]), /no baseline/);
  t.is(full([{ network: NET_A, remove: [peer(1)], add: [peer(1)] }]), 'planned', 'gone and back in one change: nothing to do');
  t.is(full([{ network: NET_A, remove: [peer(1)], add: [{ ...peer(1), ip: '10.0.0.1' }] }]), 'planned');
  t.is(programmed.get(NET_A)!.neighbours.size, 2, 'planning alone changes nothing');
});
