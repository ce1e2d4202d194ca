/**
 * IPv6, dual stack, MTU and the VXLAN port on a real kernel (root): three simulated hosts on a 1400-byte
 * underlay that carries IPv4 (198.18.0.0/15) and IPv6 (2001:2::/64), and an outside namespace, built once
 * for the file. Tests are serial because they share the hosts; each one starts by applying only its own
 * networks, which removes the previous test's. Variants (another VXLAN port, IPv6 VTEPs) are second data
 * planes on the same hosts with their own name prefixes, emptied at the end of their test.
 */

import test from 'ava';
import { endpointMac, parseIp } from '@kvnet/netaddr';
import { readUnderlay, type ActualState } from '../src/index.ts';
import { clusterMac, createSimCluster, IS_ROOT, sh, type ClusterNetwork, type SimCluster } from './fixtures/sim-cluster.ts';

const kernelTest = IS_ROOT ? test.serial : test.serial.skip;
if (!IS_ROOT) console.warn('IPv6 datapath tests need root (network namespaces); skipped');

/** The underlay MTU of the proof: overlay interfaces get 1400 − 50 = 1350. */
const UNDERLAY_MTU = 1400;
/** Largest ICMP payload that fits 1350 bytes: − 20 (IPv4) − 8 (ICMP) = 1322; − 40 (IPv6) − 8 = 1302. */
const FITS_V4 = 1322;
const FITS_V6 = 1302;

let cluster: SimCluster;
let rootBefore = '';

/** What a run must never change in the root namespace: links and ip(6)tables rules. */
function rootSnapshot(): string {
  const links = sh('ip', '-o', 'link', 'show').replace(/^\d+: /gm, '').replace(/\s+link\/.*$/gm, '');
  const rules = ['iptables-save', 'ip6tables-save']
    .flatMap((tool) => ['filter', 'nat'].map((t) => sh(tool, '-t', t).replace(/^#.*$/gm, '').replace(/\[\d+:\d+\]/g, '')))
    .join('');
  return `${links.split('\n').map((l) => l.split(':')[0]).sort().join(' ')}\n${rules}`;
}

test.before(async () => {
  if (!IS_ROOT) return;
  rootBefore = rootSnapshot();
  cluster = await createSimCluster({ hosts: 3, outside: true, ipv6: true, underlayMtu: UNDERLAY_MTU, config: { gatewayBridge: { ipv6: 'auto' } } });
});

test.after.always(async () => {
  if (cluster) await cluster.destroy().catch(() => undefined);
});

async function container(host: number, name: string) {
  return cluster.sim.addContainer(cluster.sim.hosts[host]!, name);
}

async function json(ns: string, ...args: string[]): Promise<any[]> {
  const r = await cluster.sim.exec(ns, 'ip', '-json', ...args);
  return JSON.parse(r.stdout || '[]') as any[];
}

function network(state: ActualState, id: string) {
  return state.networks.find((n) => n.id === id);
}

/** `ping -M do` (never fragment) with a payload of `size` bytes: ok, or the sender's own error text. */
async function pingDf(ns: string, target: string, size: number): Promise<{ ok: boolean; output: string }> {
  const r = await cluster.sim.exec(ns, 'ping', '-M', 'do', '-c', '1', '-W', '1', '-s', String(size), target);
  return { ok: r.code === 0, output: `${r.stdout}\n${r.stderr}` };
}

/** Global addresses (no link-local) of `ifname` in netns `ns`, as ip/len. */
async function addresses(ns: string, ifname: string): Promise<string[]> {
  const [link] = await json(ns, 'addr', 'show', 'dev', ifname);
  return (link.addr_info as { local: string; prefixlen: number; scope: string }[]).filter((a) => a.scope !== 'link').map((a) => `${a.local}/${a.prefixlen}`);
}

const sorted = <T>(xs: readonly T[], key: (x: T) => string): T[] => [...xs].sort((a, b) => key(a).localeCompare(key(b)));

kernelTest('dual stack across three hosts on a 1400-byte underlay: ping and ping -6 everywhere, the exact ARP, NDP and FDB entries, MTU 1350 on every overlay interface', async (t) => {
  const [, h2, h3] = cluster.sim.hosts;
  const c = [await container(0, 'd1'), await container(1, 'd2'), await container(2, 'd3')];
  const net: ClusterNetwork = {
    id: cluster.newId(),
    vni: 6601,
    cidr: '10.66.1.0/24',
    gateway: '10.66.1.1',
    cidr6: 'fd00:66:1::/64',
    gateway6: 'fd00:66:1::1',
    internal: false,
    endpoints: c.map((container, i) => ({ id: cluster.newId(), host: i, container, ip: `10.66.1.${i + 2}`, ip6: `fd00:66:1::${i + 2}` })),
  };
  await cluster.applyAll([net]);
  for (const [from, to] of [[0, 1], [1, 2], [2, 0]] as const) {
    t.true(await cluster.sim.ping(c[from]!.name, `10.66.1.${to + 2}`), `IPv4 h${from + 1} → h${to + 1}`);
    t.true(await cluster.sim.ping(c[from]!.name, `fd00:66:1::${to + 2}`, { tries: 2 }), `IPv6 h${from + 1} → h${to + 1}`);
  }

  const ov = network(await cluster.dataplanes[0]!.readState(), net.id)!;
  const mac = (i: number): string => `02:42:0a:42:01:0${i + 2}`;
  t.deepEqual(sorted(ov.neighbours, (n) => n.ip), [
    { ip: '10.66.1.3', mac: mac(1), permanent: true },
    { ip: '10.66.1.4', mac: mac(2), permanent: true },
    { ip: 'fd00:66:1::3', mac: mac(1), permanent: true },
    { ip: 'fd00:66:1::4', mac: mac(2), permanent: true },
  ], 'one ARP and one NDP entry per remote endpoint, both with its IPv4-derived MAC');
  t.deepEqual(sorted(ov.fdb, (e) => e.mac), [
    { mac: mac(1), dst: h2!.address },
    { mac: mac(2), dst: h3!.address },
  ], 'one FDB entry per remote endpoint');
  for (const name of ['vxlan0', 'br0']) t.is(ov.links.find((l) => l.name === name)!.mtu, 1350, name);
  t.deepEqual(ov.links.find((l) => l.name === 'br0')!.addresses, ['10.66.1.1/24', 'fd00:66:1::1/64']);
  t.true(ov.links.filter((l) => l.kind === 'veth').every((l) => l.mtu === 1350), 'overlay-side veth');
  const [eth0] = await json(c[0]!.name, 'link', 'show', 'dev', 'eth0');
  t.deepEqual([eth0.mtu, eth0.address], [1350, mac(0)]);
  t.deepEqual(await addresses(c[0]!.name, 'eth0'), ['10.66.1.2/24', 'fd00:66:1::2/64']);
  t.deepEqual(((await json(c[0]!.name, 'neigh', 'show', 'fd00:66:1::3')) as { lladdr: string }[]).map((n) => n.lladdr), [mac(1)], "the container learnt the remote endpoint's MAC by NDP");
  t.is((await cluster.dataplanes[0]!.apply(cluster.desiredFor(0, [net]))).changes, 0, 'applying again changes nothing');
});

kernelTest('on the 1400-byte underlay, ping -M do -s 1322 crosses hosts and -s 1323 fails in the sender with "message too long" (IPv6: 1302 / 1303)', async (t) => {
  const a = await container(0, 'p1');
  const b = await container(1, 'p2');
  const net: ClusterNetwork = {
    id: cluster.newId(),
    vni: 6602,
    cidr: '10.66.2.0/24',
    gateway: '10.66.2.1',
    cidr6: 'fd00:66:2::/64',
    gateway6: 'fd00:66:2::1',
    internal: false,
    endpoints: [
      { id: cluster.newId(), host: 0, container: a, ip: '10.66.2.2', ip6: 'fd00:66:2::2' },
      { id: cluster.newId(), host: 1, container: b, ip: '10.66.2.3', ip6: 'fd00:66:2::3' },
    ],
  };
  await cluster.applyAll([net]);
  t.true(await cluster.sim.ping(a.name, 'fd00:66:2::3', { tries: 2 }), 'neighbours resolved');
  const fits = await pingDf(a.name, '10.66.2.3', FITS_V4);
  t.true(fits.ok, fits.output);
  const tooBig = await pingDf(a.name, '10.66.2.3', FITS_V4 + 1);
  t.false(tooBig.ok);
  t.regex(tooBig.output, /message too long, mtu=1350/, 'refused locally, not dropped on the way');
  const fits6 = await pingDf(a.name, 'fd00:66:2::3', FITS_V6);
  t.true(fits6.ok, fits6.output);
  const tooBig6 = await pingDf(a.name, 'fd00:66:2::3', FITS_V6 + 1);
  t.false(tooBig6.ok);
  t.regex(tooBig6.output, /message too long, mtu: 1350/);
});

kernelTest('an IPv6-only network: ping -6 across hosts, NDP entries with the hashed 06: MACs, no IPv4 address on the endpoints', async (t) => {
  const [, h2] = cluster.sim.hosts;
  const a = await container(0, 's1');
  const b = await container(1, 's2');
  const net: ClusterNetwork = {
    id: cluster.newId(),
    vni: 6603,
    cidr6: 'fd00:66:3::/64',
    gateway6: 'fd00:66:3::1',
    internal: true,
    endpoints: [
      { id: cluster.newId(), host: 0, container: a, ip6: 'fd00:66:3::a' },
      { id: cluster.newId(), host: 1, container: b, ip6: 'fd00:66:3::b' },
    ],
  };
  await cluster.applyAll([net]);
  t.true(await cluster.sim.ping(a.name, 'fd00:66:3::b', { tries: 2 }));
  t.true(await cluster.sim.ping(b.name, 'fd00:66:3::a', { tries: 2 }));
  const macB = endpointMac({ ipv6: parseIp('fd00:66:3::b')! })!;
  t.regex(macB, /^06(:[0-9a-f]{2}){5}$/);
  const ov = network(await cluster.dataplanes[0]!.readState(), net.id)!;
  t.deepEqual(ov.neighbours, [{ ip: 'fd00:66:3::b', mac: macB, permanent: true }]);
  t.deepEqual(ov.fdb, [{ mac: macB, dst: h2!.address }]);
  t.deepEqual(ov.links.find((l) => l.name === 'br0')!.addresses, ['fd00:66:3::1/64']);
  t.deepEqual(await addresses(a.name, 'eth0'), ['fd00:66:3::a/64']);
  t.is((await json(b.name, 'link', 'show', 'dev', 'eth0'))[0].address, macB);
});

kernelTest("vxlan0's proxy answers neighbour solicitations from its table: without the static NDP entry a remote IPv6 address stays unresolved", async (t) => {
  const a = await container(0, 'q1');
  const b = await container(1, 'q2');
  const net: ClusterNetwork = {
    id: cluster.newId(),
    vni: 6604,
    cidr6: 'fd00:66:4::/64',
    gateway6: 'fd00:66:4::1',
    internal: true,
    endpoints: [
      { id: cluster.newId(), host: 0, container: a, ip6: 'fd00:66:4::2' },
      { id: cluster.newId(), host: 1, container: b, ip6: 'fd00:66:4::3' },
    ],
  };
  await cluster.applyAll([net]);
  const ovNs = network(await cluster.dataplanes[0]!.readState(), net.id)!.netns;
  // Take the entry away before the container ever asked: the solicitation crosses no host (no flood
  // entry in the FDB), so only the proxy could answer it.
  sh('ip', '-n', ovNs, 'neigh', 'del', 'fd00:66:4::3', 'dev', 'vxlan0');
  t.false(await cluster.sim.ping(a.name, 'fd00:66:4::3', { tries: 2 }));
  const unresolved = (await json(a.name, 'neigh', 'show', 'fd00:66:4::3')) as { state: string[]; lladdr?: string }[];
  t.true(unresolved.every((n) => n.lladdr === undefined), JSON.stringify(unresolved));
  const report = await cluster.dataplanes[0]!.apply(cluster.desiredFor(0, [net]));
  t.is(report.changes, 1, 'the next apply puts back exactly the missing entry');
  t.true(await cluster.sim.ping(a.name, 'fd00:66:4::3', { tries: 3 }));
  t.is(((await json(a.name, 'neigh', 'show', 'fd00:66:4::3')) as { lladdr: string }[])[0]!.lladdr, clusterMac(net.endpoints[1]!));
});

kernelTest('IPv6 egress through the gateway bridge: a ULA /64 on it, ip6tables masquerade, ping -6 to the outside; no ICC; an internal network has no way out', async (t) => {
  const outside6 = cluster.sim.outside!.address6!;
  const host = cluster.sim.hosts[0]!;
  const acceptRaBefore = (await cluster.sim.exec(host.name, 'sysctl', '-n', 'net.ipv6.conf.eth0.accept_ra')).stdout.trim();
  const gw = await cluster.dataplanes[0]!.ensureGatewayBridge();
  t.deepEqual(gw, { name: 'docker_gwbridge', subnet: '172.18.0.0/16', gateway: '172.18.0.1', subnet6: 'fd6b:766e:6777::/64', gateway6: 'fd6b:766e:6777::1' }, 'the host has IPv6, so the bridge gets it (ipv6: auto)');
  const e1 = await container(0, 'e1');
  const e2 = await container(0, 'e2');
  const i1 = await container(0, 'i1');
  const normal: ClusterNetwork = {
    id: cluster.newId(),
    vni: 6605,
    cidr: '10.66.5.0/24',
    gateway: '10.66.5.1',
    cidr6: 'fd00:66:5::/64',
    gateway6: 'fd00:66:5::1',
    internal: false,
    endpoints: [
      { id: cluster.newId(), host: 0, container: e1, ip: '10.66.5.2', ip6: 'fd00:66:5::2', egress: '172.18.0.2/16', egress6: 'fd6b:766e:6777::2/64' },
      { id: cluster.newId(), host: 0, container: e2, ip: '10.66.5.3', ip6: 'fd00:66:5::3', egress: '172.18.0.3/16', egress6: 'fd6b:766e:6777::3/64' },
    ],
  };
  const internal: ClusterNetwork = {
    id: cluster.newId(),
    vni: 6606,
    cidr6: 'fd00:66:6::/64',
    gateway6: 'fd00:66:6::1',
    internal: true,
    endpoints: [{ id: cluster.newId(), host: 0, container: i1, ip6: 'fd00:66:6::2' }],
  };
  await cluster.applyAll([normal, internal]);
  t.true(await cluster.sim.ping(e1.name, outside6, { tries: 2 }), 'out through the gateway bridge (masqueraded: the outside has no route to the ULA)');
  t.true(await cluster.sim.ping(e1.name, cluster.sim.outside!.address), 'IPv4 too');
  const routes6 = await json(e1.name, '-6', 'route', 'show', 'default');
  t.deepEqual(routes6.map((r) => [r.gateway, r.dev]), [['fd6b:766e:6777::1', 'eth1']]);
  t.deepEqual(await addresses(e1.name, 'eth1'), ['172.18.0.2/16', 'fd6b:766e:6777::2/64']);
  t.false(await cluster.sim.ping(e1.name, 'fd6b:766e:6777::3'), 'no IPv6 between containers over the gateway bridge (ICC off)');
  t.true(await cluster.sim.ping(e1.name, 'fd00:66:5::3'), 'but over the overlay');

  t.deepEqual(await json(i1.name, '-6', 'route', 'show', 'default'), [], 'internal: no IPv6 default route');
  t.false(await cluster.sim.ping(i1.name, outside6), 'internal: no way out');

  const state = (await cluster.dataplanes[0]!.readState()).host;
  t.true(state.ip6tables!.nat.some((r) => r.endsWith('-s fd6b:766e:6777::/64 ! -o docker_gwbridge -j MASQUERADE')), JSON.stringify(state.ip6tables));
  t.true(state.ip6tables!.filter.some((r) => r.endsWith('-i docker_gwbridge -o docker_gwbridge -j DROP')));
  t.is((await cluster.sim.exec(host.name, 'sysctl', '-n', 'net.ipv6.conf.all.forwarding')).stdout.trim(), '1');
  t.is(acceptRaBefore, '1');
  t.is((await cluster.sim.exec(host.name, 'sysctl', '-n', 'net.ipv6.conf.eth0.accept_ra')).stdout.trim(), '2', 'the underlay keeps accepting router advertisements with forwarding on');
});

kernelTest('by default (gatewayBridge.ipv6 false) the gateway bridge stays IPv4-only and nothing IPv6 changes, even on a host with IPv6', async (t) => {
  const plain = cluster.variant(30, { config: { gatewayBridge: { name: `${cluster.id}gw` } } });
  const h3 = cluster.sim.hosts[2]!;
  const gw = await plain.dataplanes[2]!.ensureGatewayBridge();
  t.deepEqual(Object.keys(gw).sort(), ['gateway', 'name', 'subnet'], 'no subnet6');
  t.deepEqual((await addresses(h3.name, gw.name)).filter((a) => a.includes(':')), []);
  t.is((await cluster.sim.exec(h3.name, 'sysctl', '-n', 'net.ipv6.conf.all.forwarding')).stdout.trim(), '0');
  t.is((await cluster.sim.exec(h3.name, 'sysctl', '-n', 'net.ipv6.conf.eth0.accept_ra')).stdout.trim(), '1');
  t.deepEqual((await plain.dataplanes[2]!.readState()).host.ip6tables, { filter: [], nat: [] });
  await plain.dataplanes[2]!.destroyAll();
});

kernelTest('a cluster on VXLAN port 4790: traffic flows, every host listens on 4790 and nothing on 4789', async (t) => {
  await cluster.applyAll([]); // the main data planes (port 4789) let go of everything
  const on4790 = cluster.variant(10, { config: { vxlanPort: 4790 } });
  try {
    const a = await container(0, 'v1');
    const b = await container(2, 'v3');
    const net: ClusterNetwork = {
      id: cluster.newId(),
      vni: 6607,
      cidr: '10.66.7.0/24',
      gateway: '10.66.7.1',
      cidr6: 'fd00:66:7::/64',
      gateway6: 'fd00:66:7::1',
      internal: true,
      endpoints: [
        { id: cluster.newId(), host: 0, container: a, ip: '10.66.7.2', ip6: 'fd00:66:7::2' },
        { id: cluster.newId(), host: 2, container: b, ip: '10.66.7.3', ip6: 'fd00:66:7::3' },
      ],
    };
    await on4790.applyAll([net]);
    t.true(await cluster.sim.ping(a.name, '10.66.7.3'));
    t.true(await cluster.sim.ping(b.name, 'fd00:66:7::2', { tries: 2 }));
    const vx = network(await on4790.dataplanes[0]!.readState(), net.id)!.links.find((l) => l.name === 'vxlan0')!;
    t.is(vx.vxlan!.port, 4790);
    for (const i of [0, 2]) {
      const udp = (await cluster.sim.exec(cluster.sim.hosts[i]!.name, 'ss', '-Huln')).stdout;
      t.regex(udp, /:4790\s/, `h${i + 1} listens on 4790`);
      t.notRegex(udp, /:4789\s/, `h${i + 1}: nothing listens on 4789`);
    }
  } finally {
    await Promise.all(on4790.dataplanes.map((dp) => dp.apply({ networks: [] })));
  }
});

kernelTest('IPv6 VTEPs: a dual-stack overlay over the IPv6 underlay, vxlan0 sending from the IPv6 address, FDB entries to IPv6 VTEPs, MTU 1400 − 70 = 1330', async (t) => {
  const [h1, h2] = cluster.sim.hosts;
  const over6 = cluster.variant(20, { ipv6Vteps: true });
  try {
    t.is(over6.dataplanes[0]!.overlayMtu, 1330);
    const a = await container(0, 'w1');
    const b = await container(1, 'w2');
    const net: ClusterNetwork = {
      id: cluster.newId(),
      vni: 6608,
      cidr: '10.66.8.0/24',
      gateway: '10.66.8.1',
      cidr6: 'fd00:66:8::/64',
      gateway6: 'fd00:66:8::1',
      internal: true,
      endpoints: [
        { id: cluster.newId(), host: 0, container: a, ip: '10.66.8.2', ip6: 'fd00:66:8::2' },
        { id: cluster.newId(), host: 1, container: b, ip: '10.66.8.3', ip6: 'fd00:66:8::3' },
      ],
    };
    await over6.applyAll([net]);
    t.true(await cluster.sim.ping(a.name, '10.66.8.3'));
    t.true(await cluster.sim.ping(a.name, 'fd00:66:8::3', { tries: 2 }));
    const ov = network(await over6.dataplanes[0]!.readState(), net.id)!;
    const vx = ov.links.find((l) => l.name === 'vxlan0')!;
    t.deepEqual([vx.vxlan!.local, vx.mtu], [h1!.address6, 1330]);
    t.deepEqual(ov.fdb, [{ mac: '02:42:0a:42:08:03', dst: h2!.address6 }]);
    const fits = await pingDf(a.name, '10.66.8.3', 1330 - 28);
    t.true(fits.ok, fits.output);
    t.regex((await pingDf(a.name, '10.66.8.3', 1330 - 27)).output, /message too long, mtu=1330/);
    const udp = (await cluster.sim.exec(h1!.name, 'ss', '-Huln')).stdout;
    t.regex(udp, /\[::\]:4789\s/, 'the VXLAN socket is an IPv6 one');
  } finally {
    await Promise.all(over6.dataplanes.map((dp) => dp.apply({ networks: [] })));
  }
});

kernelTest('a network MTU above what the underlay carries is applied as asked and reported as a warning, naming the network and both numbers', async (t) => {
  const a = await container(0, 'm1');
  const net: ClusterNetwork = { id: cluster.newId(), vni: 6609, cidr: '10.66.9.0/24', gateway: '10.66.9.1', internal: true, mtu: 1450, endpoints: [{ id: cluster.newId(), host: 0, container: a, ip: '10.66.9.2' }] };
  const [report] = await cluster.applyAll([net]);
  t.deepEqual(report!.errors, []);
  t.deepEqual(report!.warnings.map((w) => w.code), ['KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY']);
  t.regex(report!.warnings[0]!.message, new RegExp(`network ${net.id.slice(0, 12)}: MTU 1450 is above 1350, what the underlay carries \\(MTU 1400 − 50 bytes of VXLAN over IPv4\\)`));
  t.is((await json(a.name, 'link', 'show', 'dev', 'eth0'))[0].mtu, 1450);
});

kernelTest("the underlay interface is read from the host namespace: its name, MTU, family and the overlay MTU it carries", async (t) => {
  const h = cluster.sim.hosts[1]!;
  t.deepEqual(await readUnderlay({ hostNetns: h.name, address: h.address }), { ifname: 'eth0', mtu: 1400, address: h.address, family: 4, overlayMtu: 1350 });
  t.deepEqual(await readUnderlay({ hostNetns: h.name, address: h.address6! }), { ifname: 'eth0', mtu: 1400, address: h.address6, family: 6, overlayMtu: 1330 });
  t.like(await cluster.dataplanes[1]!.readUnderlay(), { ifname: 'eth0', mtu: 1400, overlayMtu: 1350 });
  const missing = await t.throwsAsync(readUnderlay({ hostNetns: h.name, address: '198.18.9.9' }));
  t.is((missing as { code?: string }).code, 'KVNET_DATAPLANE_INVALID_CONFIG');
  t.regex(missing!.message, new RegExp(`vtep="198.18.9.9": no interface in host netns ${h.name} has this address`));
});

kernelTest('everything created is removed, ip6tables chains included; the root namespace is untouched', async (t) => {
  for (const dp of cluster.dataplanes) await dp.destroyAll();
  for (const [i, h] of cluster.sim.hosts.entries()) {
    const prefix = cluster.dataplanes[i]!.prefix;
    t.false(sh('ip', 'netns', 'list').includes(`${prefix}-`), `no overlay namespace of ${prefix}`);
    const links = ((await json(h.name, 'link', 'show')) as { ifname: string }[]).map((l) => l.ifname);
    t.deepEqual(links, ['lo', 'eth0'], `${h.name} holds only what the simulation made`);
    for (const tool of ['iptables-save', 'ip6tables-save']) {
      t.false((await cluster.sim.exec(h.name, tool)).stdout.includes(prefix.toUpperCase()), `${h.name}: no ${prefix.toUpperCase()} chain in ${tool}`);
    }
  }
  t.deepEqual(await cluster.destroy(), []);
  t.false(sh('ip', 'netns', 'list').includes(cluster.id));
  t.is(rootSnapshot(), rootBefore);
});
