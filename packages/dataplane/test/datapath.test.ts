/**
 * The data path on a real kernel (root): three simulated hosts and an outside namespace, built once for
 * the file; each test declares the cluster's networks and applies every host's share. Tests are serial
 * because they share the hosts; each one starts by applying only its own networks, which removes the
 * previous test's.
 */

import test from 'ava';
import type { ActualState } from '../src/index.ts';
import { createSimCluster, IS_ROOT, sh, type ClusterNetwork, type SimCluster } from './fixtures/sim-cluster.ts';

const kernelTest = IS_ROOT ? test.serial : test.serial.skip;
if (!IS_ROOT) console.warn('datapath tests need root (network namespaces); skipped');

let cluster: SimCluster;
let rootBefore = '';

/** What a run must never change in the root namespace: links and iptables rules. */
function rootSnapshot(): string {
  const links = sh('ip', '-o', 'link', 'show').replace(/^\d+: /gm, '').replace(/\s+link\/.*$/gm, '');
  const rules = ['filter', 'nat'].map((t) => sh('iptables-save', '-t', t).replace(/^#.*$/gm, '').replace(/\[\d+:\d+\]/g, '')).join('');
  return `${links.split('\n').map((l) => l.split(':')[0]).sort().join(' ')}\n${rules}`;
}

test.before(async () => {
  if (!IS_ROOT) return;
  rootBefore = rootSnapshot();
  cluster = await createSimCluster({ hosts: 3, outside: true });
});

test.after.always(async () => {
  if (cluster) await cluster.destroy().catch(() => undefined);
});

async function container(host: number, name: string) {
  return cluster.sim.addContainer(cluster.sim.hosts[host]!, name);
}

async function json(ns: string, ...args: string[]): Promise<unknown> {
  const r = await cluster.sim.exec(ns, 'ip', '-json', ...args);
  return JSON.parse(r.stdout || '[]');
}

function network(state: ActualState, id: string) {
  return state.networks.find((n) => n.id === id);
}

kernelTest('two endpoints on different hosts ping each other over VXLAN, with exactly the expected entries, MTU, MAC and routes', async (t) => {
  const [h1, h2] = cluster.sim.hosts;
  const c1 = await container(0, 'a1');
  const c2 = await container(1, 'a2');
  const net: ClusterNetwork = {
    id: cluster.newId(),
    vni: 5001,
    cidr: '10.10.1.0/24',
    gateway: '10.10.1.1',
    internal: false,
    endpoints: [
      { id: cluster.newId(), host: 0, container: c1, ip: '10.10.1.2' },
      { id: cluster.newId(), host: 1, container: c2, ip: '10.10.1.3' },
    ],
  };
  await cluster.applyAll([net]);
  t.true(await cluster.sim.ping(c1.name, '10.10.1.3'), 'h1 → h2');
  t.true(await cluster.sim.ping(c2.name, '10.10.1.2'), 'h2 → h1');

  const s1 = await cluster.dataplanes[0]!.readState();
  const ov = network(s1, net.id)!;
  t.deepEqual(ov.neighbours, [{ ip: '10.10.1.3', mac: '02:42:0a:0a:01:03', permanent: true }]);
  t.deepEqual(ov.fdb, [{ mac: '02:42:0a:0a:01:03', dst: h2!.address }]);
  const vx = ov.links.find((l) => l.name === 'vxlan0')!;
  t.deepEqual(vx.vxlan, { vni: 5001, port: 4789, local: h1!.address, learning: false, proxy: true });
  t.is(vx.mtu, 1450);
  t.is(vx.master, 'br0');
  t.deepEqual(ov.links.find((l) => l.name === 'br0')?.addresses, ['10.10.1.1/24']);
  t.deepEqual(s1.networks.map((n) => n.id), [net.id], 'h1 has exactly one overlay namespace');
  // The packets really crossed the VXLAN device.
  const stats = (await json(ov.netns, '-s', 'link', 'show', 'dev', 'vxlan0')) as { stats64: { tx: { packets: number } } }[];
  t.true(stats[0]!.stats64.tx.packets > 0);

  const eth0 = ((await json(c1.name, 'link', 'show', 'dev', 'eth0')) as { mtu: number; address: string; flags: string[] }[])[0]!;
  t.is(eth0.mtu, 1450);
  t.is(eth0.address, '02:42:0a:0a:01:02');
  t.true(eth0.flags.includes('UP'));
  const routes = (await json(c1.name, 'route', 'show')) as { dst: string; dev: string; scope?: string }[];
  t.deepEqual(routes.map((r) => [r.dst, r.dev, r.scope]), [['10.10.1.0/24', 'eth0', 'link']], 'on-link route, no default route without egress');
});

kernelTest('applying the same desired state twice makes zero changes the second time', async (t) => {
  const c1 = await container(0, 'b1');
  const c2 = await container(1, 'b2');
  const c3 = await container(2, 'b3');
  const gw = await cluster.dataplanes[0]!.ensureGatewayBridge();
  const net: ClusterNetwork = {
    id: cluster.newId(),
    vni: 5002,
    cidr: '10.11.1.0/24',
    gateway: '10.11.1.1',
    internal: false,
    endpoints: [
      { id: cluster.newId(), host: 0, container: c1, ip: '10.11.1.2', egress: `${gw.subnet.replace(/\.0\.0\/16$/, '.0.2')}/16` },
      { id: cluster.newId(), host: 1, container: c2, ip: '10.11.1.3' },
      { id: cluster.newId(), host: 2, container: c3, ip: '10.11.1.4' },
    ],
  };
  const first = await cluster.applyAll([net]);
  t.true(first.every((r) => r.changes > 0));
  const before = await Promise.all(cluster.dataplanes.map((dp) => dp.readState()));
  const second = await cluster.applyAll([net]);
  t.deepEqual(second.map((r) => [r.changes, r.rounds]), [[0, 1], [0, 1], [0, 1]]);
  const after = await Promise.all(cluster.dataplanes.map((dp) => dp.readState()));
  t.deepEqual(after, before);
  t.true(await cluster.sim.ping(c3.name, '10.11.1.2'));
});

kernelTest('a peer moved to another host is reachable at its new place; a removed peer leaves no entry anywhere', async (t) => {
  const [, h2, h3] = cluster.sim.hosts;
  const c1 = await container(0, 'm1');
  const onH2 = await container(1, 'm2');
  const onH3 = await container(2, 'm3');
  const id = cluster.newId();
  const staying = cluster.newId();
  const mover = cluster.newId();
  const net = (host: number): ClusterNetwork => ({
    id,
    vni: 5003,
    cidr: '10.12.1.0/24',
    gateway: '10.12.1.1',
    internal: false,
    endpoints: [
      { id: staying, host: 0, container: c1, ip: '10.12.1.2' },
      { id: mover, host, container: host === 1 ? onH2 : onH3, ip: '10.12.1.3' },
    ],
  });
  await cluster.applyAll([net(1)]);
  t.true(await cluster.sim.ping(c1.name, '10.12.1.3'));
  t.deepEqual(network(await cluster.dataplanes[0]!.readState(), id)!.fdb, [{ mac: '02:42:0a:0c:01:03', dst: h2!.address }]);

  await cluster.applyAll([net(2)]);
  t.true(await cluster.sim.ping(c1.name, '10.12.1.3', { tries: 3 }), 'reachable on h3');
  const s1 = network(await cluster.dataplanes[0]!.readState(), id)!;
  t.deepEqual(s1.fdb, [{ mac: '02:42:0a:0c:01:03', dst: h3!.address }]);
  t.deepEqual(s1.neighbours, [{ ip: '10.12.1.3', mac: '02:42:0a:0c:01:03', permanent: true }]);
  t.deepEqual((await cluster.dataplanes[1]!.readState()).networks, [], 'h2 has no endpoint left: its overlay namespace is gone');
  t.deepEqual(((await json(onH2.name, 'link', 'show')) as { ifname: string }[]).map((l) => l.ifname), ['lo'], 'and so is the old container interface');

  const gone: ClusterNetwork = { ...net(2), endpoints: net(2).endpoints.filter((e) => e.id !== mover) };
  await cluster.applyAll([gone]);
  const after = network(await cluster.dataplanes[0]!.readState(), id)!;
  t.deepEqual(after.neighbours, []);
  t.deepEqual(after.fdb, []);
  t.deepEqual((await cluster.dataplanes[2]!.readState()).networks, []);
  t.false(await cluster.sim.ping(c1.name, '10.12.1.3'));
});

kernelTest('two networks on the same hosts cannot reach each other, even with the same subnet', async (t) => {
  const a1 = await container(0, 'n1');
  const a2 = await container(1, 'n2');
  const b1 = await container(0, 'n3');
  const b2 = await container(1, 'n4');
  const netA: ClusterNetwork = {
    id: cluster.newId(),
    vni: 5101,
    cidr: '10.20.1.0/24',
    gateway: '10.20.1.1',
    internal: false,
    endpoints: [
      { id: cluster.newId(), host: 0, container: a1, ip: '10.20.1.2' },
      { id: cluster.newId(), host: 1, container: a2, ip: '10.20.1.3' },
    ],
  };
  const netB: ClusterNetwork = {
    ...netA,
    id: cluster.newId(),
    vni: 5102,
    endpoints: [
      { id: cluster.newId(), host: 0, container: b1, ip: '10.20.1.4' },
      { id: cluster.newId(), host: 1, container: b2, ip: '10.20.1.5' },
    ],
  };
  await cluster.applyAll([netA, netB]);
  t.true(await cluster.sim.ping(a1.name, '10.20.1.3'), 'A works');
  t.true(await cluster.sim.ping(b1.name, '10.20.1.5'), 'B works');
  t.false(await cluster.sim.ping(a1.name, '10.20.1.5'), 'A on h1 → B on h2');
  t.false(await cluster.sim.ping(a1.name, '10.20.1.4'), 'A on h1 → B on h1');
  t.false(await cluster.sim.ping(b2.name, '10.20.1.3'), 'B on h2 → A on h2');
  const s1 = await cluster.dataplanes[0]!.readState();
  t.deepEqual(s1.networks.map((n) => n.links.find((l) => l.name === 'vxlan0')?.vxlan?.vni).sort(), [5101, 5102]);
  t.is(new Set(s1.networks.map((n) => n.netns)).size, 2);
});

kernelTest('egress: a normal network reaches the outside through the gateway bridge, containers on it cannot talk over it, an internal network has no way out', async (t) => {
  const outside = cluster.sim.outside!.address;
  const gw = await cluster.dataplanes[0]!.ensureGatewayBridge();
  t.deepEqual(gw, { name: 'docker_gwbridge', subnet: '172.18.0.0/16', gateway: '172.18.0.1' });
  const n1 = await container(0, 'g1');
  const n2 = await container(0, 'g2');
  const i1 = await container(0, 'i1');
  const i2 = await container(1, 'i2');
  const normal: ClusterNetwork = {
    id: cluster.newId(),
    vni: 5201,
    cidr: '10.30.1.0/24',
    gateway: '10.30.1.1',
    internal: false,
    endpoints: [
      { id: cluster.newId(), host: 0, container: n1, ip: '10.30.1.2', egress: '172.18.0.2/16' },
      { id: cluster.newId(), host: 0, container: n2, ip: '10.30.1.3', egress: '172.18.0.3/16' },
    ],
  };
  const internal: ClusterNetwork = {
    id: cluster.newId(),
    vni: 5202,
    cidr: '10.31.1.0/24',
    gateway: '10.31.1.1',
    internal: true,
    endpoints: [
      { id: cluster.newId(), host: 0, container: i1, ip: '10.31.1.2' },
      { id: cluster.newId(), host: 1, container: i2, ip: '10.31.1.3' },
    ],
  };
  await cluster.applyAll([normal, internal]);

  t.true(await cluster.sim.ping(n1.name, outside), 'out through docker_gwbridge (masqueraded: the outside has no route back otherwise)');
  const routes = (await json(n1.name, 'route', 'show', 'default')) as { gateway: string; dev: string }[];
  t.deepEqual(routes.map((r) => [r.gateway, r.dev]), [['172.18.0.1', 'eth1']]);
  t.true(await cluster.sim.ping(n1.name, '10.30.1.3'), 'the two containers do talk over the overlay');
  t.false(await cluster.sim.ping(n1.name, '172.18.0.3'), 'but not over the gateway bridge (ICC off)');

  t.deepEqual(await json(i1.name, 'route', 'show', 'default'), [], 'internal: no default route');
  t.false(await cluster.sim.ping(i1.name, outside), 'internal: no way out');
  t.true(await cluster.sim.ping(i1.name, '10.31.1.3'), 'internal: the overlay works');

  const host = (await cluster.dataplanes[0]!.readState()).host;
  t.true(host.links.length === 2 && host.links.every((l) => l.isolated && l.master === 'docker_gwbridge'));
  t.true(host.iptables!.nat.some((r) => r.endsWith('-s 172.18.0.0/16 ! -o docker_gwbridge -j MASQUERADE')));
  t.true(host.iptables!.filter.some((r) => r.endsWith('-i docker_gwbridge -o docker_gwbridge -j DROP')));
});

kernelTest('everything created is removed: namespaces, host links, gateway bridge, iptables chains; the root namespace is untouched', async (t) => {
  for (const dp of cluster.dataplanes) await dp.destroyAll();
  const netns = sh('ip', 'netns', 'list');
  for (const [i, h] of cluster.sim.hosts.entries()) {
    const prefix = cluster.dataplanes[i]!.prefix;
    t.false(netns.includes(`${prefix}-`), `no overlay namespace of ${prefix}`);
    const links = ((await json(h.name, 'link', 'show')) as { ifname: string }[]).map((l) => l.ifname);
    t.deepEqual(links, ['lo', 'eth0'], `${h.name} holds only what the simulation made`);
    const rules = (await cluster.sim.exec(h.name, 'iptables-save')).stdout;
    t.false(rules.includes(prefix.toUpperCase()), `${h.name} has no ${prefix.toUpperCase()} chain`);
  }
  t.deepEqual(await cluster.destroy(), []);
  t.false(sh('ip', 'netns', 'list').includes(cluster.id));
  t.is(rootSnapshot(), rootBefore);
});
