/**
 * The incremental path (`applyPeers`) on a real kernel (root), against the full path: after any
 * sequence of peer changes applied on their own, the kernel holds what a full apply of the final
 * desired state makes — read back from both, compared, and the full planner finds nothing to do.
 * Traffic to a peer added this way flows; a refused line hands the next change to the full path; the
 * long-lived batch processes follow the namespaces they work in and end with `close()`.
 */

import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import type { DesiredPeer, DesiredState } from '../src/index.ts';
import { clusterMac, createSimCluster, IS_ROOT, sh, type ClusterNetwork, type SimCluster, type SimDataplanes } from './fixtures/sim-cluster.ts';

const kernelTest = IS_ROOT ? test.serial : test.serial.skip;
if (!IS_ROOT) console.warn('incremental data plane tests need root (network namespaces); skipped');

let cluster: SimCluster;
/** Host 1's second data plane on another VXLAN port: the full path's result, side by side. */
let reference: SimDataplanes;

test.before(async () => {
  if (!IS_ROOT) return;
  cluster = await createSimCluster({ hosts: 3 });
  reference = cluster.variant(10, { config: { vxlanPort: 4790 } });
});

test.after.always(async () => {
  if (!cluster) return;
  for (const dp of [...cluster.dataplanes, ...reference.dataplanes]) dp.close();
  await cluster.destroy().catch(() => undefined);
});

/** Every third peer is dual-stack: an NDP entry beside its ARP one. */
const fakePeer = (n: number, vtep: string): DesiredPeer => ({
  ip: `10.20.${n >> 8}.${n & 255}`,
  ...(n % 3 === 0 ? { ipv6: `fd00:20::${n.toString(16)}` } : {}),
  mac: `02:42:0a:14:${(n >> 8).toString(16).padStart(2, '0')}:${(n & 255).toString(16).padStart(2, '0')}`,
  vtep,
});

/** The vxlan0 entries of a network on host 0 of `dps`, as sorted text. */
async function entries(dps: SimDataplanes, nid: string): Promise<{ neighbours: string[]; fdb: string[] }> {
  const state = await dps.dataplanes[0]!.readState({ iptables: false });
  const n = state.networks.find((x) => x.id === nid)!;
  return {
    neighbours: n.neighbours.map((e) => `${e.ip} ${e.mac} ${e.permanent}`).sort(),
    fdb: n.fdb.map((e) => `${e.mac} ${e.dst}`).sort(),
  };
}

/** Live `ip`/`bridge -batch` processes this test process started (the sessions). */
function batchChildren(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== process.pid) continue;
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes('-batch')) out.push(cmd.trim());
    } catch {
      // gone
    }
  }
  return out;
}

kernelTest('peer changes applied on their own leave the kernel as the full path leaves it, and traffic flows to a peer added that way', async (t) => {
  const [h0, h1, h2] = cluster.sim.hosts;
  const c0 = await cluster.sim.addContainer(h0!, 'i0');
  const c1 = await cluster.sim.addContainer(h1!, 'i1');
  const remote = { id: cluster.newId(), host: 1, container: c1, ip: '10.20.200.3' };
  const net: ClusterNetwork = { id: cluster.newId(), vni: 6001, cidr: '10.20.0.0/16', gateway: '10.20.0.1', internal: true, endpoints: [{ id: cluster.newId(), host: 0, container: c0, ip: '10.20.200.2' }, remote] };
  await cluster.applyAll([net]); // host 1 has the network with host 0's endpoint as its peer
  const base = cluster.desiredFor(0, [net]).networks[0]!;
  const vteps = [h1!.address, h2!.address, '198.18.9.9'];
  const peers = new Map<number, DesiredPeer>(Array.from({ length: 30 }, (_, n) => [n, fakePeer(n, vteps[n % 3]!)]));
  const desired = (): DesiredState => ({ networks: [{ ...base, peers: [...peers.values()] }] });
  const dp = cluster.dataplanes[0]!;
  t.deepEqual((await dp.apply(desired())).errors, []);

  // the real peer, on its own: one neighbour and one FDB line, no kernel read
  const real: DesiredPeer = { ip: remote.ip, mac: clusterMac(remote), vtep: h1!.address };
  const r1 = await dp.applyPeers([{ network: net.id, remove: [], add: [real] }]);
  t.like(r1, { incremental: true, changes: 2, errors: [] });
  peers.set(1000, real);
  t.true(await cluster.sim.ping(c0.name, remote.ip), 'host 0 → host 1 through a peer added incrementally');

  let seed = 7;
  const random = (): number => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (let step = 0; step < 25; step++) {
    const remove: DesiredPeer[] = [];
    const add: DesiredPeer[] = [];
    for (let c = 0; c < 1 + Math.floor(random() * 4); c++) {
      const n = Math.floor(random() * 60);
      const was = peers.get(n);
      if (was && remove.includes(was)) continue;
      if (was && random() < 0.5) {
        remove.push(was);
        peers.delete(n);
      } else if (was) {
        const moved = fakePeer(n, vteps[(vteps.indexOf(was.vtep) + 1) % 3]!);
        remove.push(was);
        add.push(moved);
        peers.set(n, moved);
      } else if (!add.some((p) => p.ip === fakePeer(n, '').ip)) {
        const p = fakePeer(n, vteps[n % 3]!);
        add.push(p);
        peers.set(n, p);
      }
    }
    const r = await dp.applyPeers([{ network: net.id, remove, add }]);
    t.like(r, { incremental: true, errors: [] }, `step ${step}`);
  }

  const [state, sandboxes] = [await dp.readState({ iptables: false }), { [c0.path]: 'netns' as const }];
  t.deepEqual(dp.plan(desired(), { ...state, sandboxes }).changes, 0, 'the full planner finds nothing left to do');
  // the reference plugs its own container (a sandbox takes one eth0), with the same peers
  const cr = await cluster.sim.addContainer(h0!, 'i0r');
  const refEndpoint = { id: cluster.newId(), address: '10.20.200.9/16', sandbox: { path: cr.path, ifname: 'eth0' } };
  const ref = reference.dataplanes[0]!;
  t.deepEqual((await ref.apply({ networks: [{ ...base, endpoints: [refEndpoint], peers: [...peers.values()] }] })).errors, []);
  const mine = await entries(cluster, net.id);
  t.deepEqual(mine, await entries(reference, net.id), 'the same entries as a full apply of the final state');
  t.is(mine.fdb.length, peers.size);
  t.is(mine.neighbours.length, [...peers.values()].reduce((k, p) => k + (p.ip ? 1 : 0) + (p.ipv6 ? 1 : 0), 0), 'one ARP entry per peer, and an NDP entry per dual-stack one');
  t.true(mine.neighbours.some((e) => e.startsWith('fd00:20::')), 'NDP entries made by the incremental path');
  t.true(await cluster.sim.ping(c0.name, remote.ip));
  await ref.apply({ networks: [] });
});

kernelTest('a line the kernel refuses fails the change; until a full apply has run, changes go to the full path, which repairs the kernel', async (t) => {
  const [h0, h1] = cluster.sim.hosts;
  const c0 = await cluster.sim.addContainer(h0!, 'j0');
  const net: ClusterNetwork = { id: cluster.newId(), vni: 6002, cidr: '10.21.0.0/16', gateway: '10.21.0.1', internal: true, endpoints: [{ id: cluster.newId(), host: 0, container: c0, ip: '10.21.0.2' }] };
  const dp = cluster.dataplanes[0]!;
  const p1: DesiredPeer = { ip: '10.21.0.3', mac: '02:42:0a:15:00:03', vtep: h1!.address };
  const p2: DesiredPeer = { ip: '10.21.0.4', mac: '02:42:0a:15:00:04', vtep: h1!.address };
  const base = cluster.desiredFor(0, [net]).networks[0]!;
  t.deepEqual((await dp.apply({ networks: [{ ...base, peers: [p1, p2] }] })).errors, []);
  // behind the data plane's back
  sh('ip', '-n', `${dp.prefix}-${net.id}`, 'neigh', 'del', p1.ip!, 'dev', 'vxlan0');
  const failed = await dp.applyPeers([{ network: net.id, remove: [p1], add: [] }]);
  t.true(failed.incremental);
  t.true(failed.errors.length > 0, 'the refused delete is reported');
  const declined = await dp.applyPeers([{ network: net.id, remove: [p2], add: [] }]);
  t.like(declined, { incremental: false, changes: 0 });
  t.regex(declined.reason!, /no error-free full apply/);
  t.deepEqual((await dp.apply({ networks: [{ ...base, peers: [] }] })).errors, []);
  const e = await entries(cluster, net.id);
  t.deepEqual(e, { neighbours: [], fdb: [] });
  t.like(await dp.applyPeers([{ network: net.id, remove: [], add: [p1] }]), { incremental: true, changes: 2, errors: [] });
});

kernelTest('batch processes follow their namespace: a network made again gets new ones, a removed one keeps none alive, close() ends them all', async (t) => {
  const [h0, h1] = cluster.sim.hosts;
  const c0 = await cluster.sim.addContainer(h0!, 'k0');
  const net: ClusterNetwork = { id: cluster.newId(), vni: 6003, cidr: '10.22.0.0/16', gateway: '10.22.0.1', internal: true, endpoints: [{ id: cluster.newId(), host: 0, container: c0, ip: '10.22.0.2' }] };
  const dp = cluster.dataplanes[0]!;
  const base = cluster.desiredFor(0, [net]).networks[0]!;
  const p = (n: number): DesiredPeer => ({ ip: `10.22.0.${n}`, mac: `02:42:0a:16:00:${n.toString(16).padStart(2, '0')}`, vtep: h1!.address });
  const ns = `${dp.prefix}-${net.id}`;
  t.deepEqual((await dp.apply({ networks: [{ ...base, peers: [] }] })).errors, []);
  t.like(await dp.applyPeers([{ network: net.id, remove: [], add: [p(3)] }]), { incremental: true, errors: [] });
  t.true(batchChildren().some((c) => c.includes(ns)), 'a session runs in the overlay namespace');

  t.deepEqual((await dp.apply({ networks: [] })).errors, []);
  t.false(batchChildren().some((c) => c.includes(ns)), 'removing the network ended its sessions (they would keep the namespace alive)');
  t.false(readdirSync('/run/netns').includes(ns));

  t.deepEqual((await dp.apply({ networks: [{ ...base, peers: [] }] })).errors, []);
  t.like(await dp.applyPeers([{ network: net.id, remove: [], add: [p(4)] }]), { incremental: true, errors: [] });
  t.deepEqual(await entries(cluster, net.id), { neighbours: [`10.22.0.4 ${p(4).mac} true`], fdb: [`${p(4).mac} ${h1!.address}`] }, 'programmed in the new namespace');
  dp.close();
  await new Promise((r) => setTimeout(r, 200));
  t.deepEqual(batchChildren(), []);
  await dp.apply({ networks: [] });
});

kernelTest('trustPeers: a local change reads everything but the peer tables (drift there waits for an apply without it, which repairs it)', async (t) => {
  const [h0, h1] = cluster.sim.hosts;
  const c0 = await cluster.sim.addContainer(h0!, 'm0');
  const c0b = await cluster.sim.addContainer(h0!, 'm1');
  const net: ClusterNetwork = { id: cluster.newId(), vni: 6004, cidr: '10.23.0.0/16', gateway: '10.23.0.1', internal: true, endpoints: [{ id: cluster.newId(), host: 0, container: c0, ip: '10.23.0.2' }] };
  const dp = cluster.dataplanes[0]!;
  const base = cluster.desiredFor(0, [net]).networks[0]!;
  const peers: DesiredPeer[] = Array.from({ length: 5 }, (_, i) => ({ ip: `10.23.1.${i + 1}`, mac: `02:42:0a:17:01:0${i + 1}`, vtep: h1!.address }));
  t.deepEqual((await dp.apply({ networks: [{ ...base, peers }] })).errors, []);
  t.like(await dp.applyPeers([{ network: net.id, remove: [peers[4]!], add: [] }]), { incremental: true, errors: [] });
  const kept = peers.slice(0, 4);
  sh('ip', '-n', `${dp.prefix}-${net.id}`, 'neigh', 'del', kept[0]!.ip!, 'dev', 'vxlan0'); // drift

  const second = { id: cluster.newId(), address: '10.23.0.3/16', sandbox: { path: c0b.path, ifname: 'eth0' } };
  const withSecond: DesiredState = { networks: [{ ...base, endpoints: [...base.endpoints, second], peers: kept }] };
  const r = await dp.apply(withSecond, { trustPeers: true });
  t.deepEqual(r.errors, []);
  t.true(r.changes > 0, 'the new local endpoint was plumbed');
  let e = await entries(cluster, net.id);
  t.is(e.neighbours.length, 3, 'the drift is not seen: the peer tables were not read');
  t.is(e.fdb.length, 4, 'the incrementally removed peer stays removed');

  t.deepEqual((await dp.apply(withSecond)).errors, []);
  e = await entries(cluster, net.id);
  t.is(e.neighbours.length, 4, 'an apply without trustPeers reads them and repairs the drift');
  t.deepEqual((await dp.apply({ networks: [] })).errors, []);
});
