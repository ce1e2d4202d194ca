/**
 * Issue 15 on simulated hosts with real agents (test/support/cluster.ts: three host namespaces on one
 * underlay whose links have MTU 1400, with IPv6 underlay addresses too, one `kvnet agent` process per
 * host on the embedded store), through the `kvnet` CLI and the local API, the way a user would:
 *
 * - MTU: every endpoint gets 1350 (1400 − 50) by default; `ping -M do -s 1322` crosses hosts and
 *   `-s 1323` fails in the sender with "message too long"; `--mtu` is honoured; an MTU above the
 *   underlay is refused; a host whose underlay is smaller reports the network at start and when it
 *   appears (log, metric, `/v1/status`, `network inspect`);
 * - dual-stack and IPv6-only networks on three hosts: `ping -6` across hosts, `--ip6`, the exact NDP,
 *   ARP and FDB entries on every host, IPv6 egress through the gateway bridge (masqueraded);
 * - 60 concurrent connects on a dual-stack network: addresses unique in both families, all released on
 *   disconnect; a dead host's endpoints reaped with both addresses released and their entries gone;
 * - bad input (an IPv6 subnet larger than /64, overlapping IPv6 pools, `--ip6` outside the subnet):
 *   clear errors, nothing stored.
 *
 * Needs root. Timings are logged, never asserted.
 */

import test, { type ExecutionContext } from 'ava';
import { Cluster, mapLimit, sleep, type ClusterHost, type Container, type Endpoint } from '../support/cluster.ts';
import { waitFor } from '../support/process.ts';

const UNDERLAY_MTU = 1400;
const NETWORK_MTU = UNDERLAY_MTU - 50;
/** IPv4 + ICMP headers: `ping -s N` sends N + 28 bytes of IPv4. */
const ICMP4_OVERHEAD = 28;
const CONVERGE_MS = 60_000;
const SCENARIO_TIMEOUT_MS = 6 * 60_000;
/** The outside namespace's IPv6 address on the underlay (sim-hosts.ts OUTSIDE_ADDRESS6). */
const OUTSIDE6 = '2001:2::ffff';
/** h3 dies last (reaping): a short lease so that does not take long; the others keep 10 s (agent restarts stay within it). */
const HOST_TTL = '10s';
const DYING_TTL = '3s';

let cluster: Cluster;
const isRoot = process.getuid?.() === 0;

test.before(async (t) => {
  t.timeout(5 * 60_000);
  if (!isRoot) throw new Error('the IPv6/MTU cluster tests need root (network namespaces)');
  cluster = await Cluster.create({
    backend: 'local',
    hosts: 3,
    underlayMtu: UNDERLAY_MTU,
    ipv6: true,
    outside: true,
    ttl: HOST_TTL,
    ttlFor: (node) => (node === 'h3' ? DYING_TTL : undefined),
    progress: (m) => t.log(m),
  });
});

test.afterEach.always((t) => {
  if (!t.passed && cluster) t.log(cluster.diagnostics(40));
});

test.after.always(async () => {
  await cluster?.teardown();
});

const scenario = (title: string, fn: (t: ExecutionContext, c: Cluster) => Promise<void>): void => {
  test.serial(title, async (t) => {
    t.timeout(SCENARIO_TIMEOUT_MS);
    const t0 = Date.now();
    try {
      await fn(t, cluster);
    } finally {
      t.log(`took ${Date.now() - t0} ms`);
    }
  });
};

/** `ping -M do -s SIZE` (Don't Fragment) once from a container. */
async function pingDf(c: Cluster, from: Container, ip: string, size: number): Promise<{ ok: boolean; output: string }> {
  const r = await c.exec(from.name, 'ping', '-M', 'do', '-s', String(size), '-c', '1', '-W', '2', '-n', ip);
  return { ok: r.code === 0, output: `${r.stdout}${r.stderr}` };
}

/** Waits until every container reaches every other's address (`ips[i]` is `containers[i]`'s). */
async function waitForMesh(t: ExecutionContext, c: Cluster, containers: readonly Container[], ips: readonly string[], what: string): Promise<void> {
  const t0 = Date.now();
  let pending = containers.map((ct, i) => ({ ct, targets: ips.filter((_, j) => j !== i) }));
  while (pending.length > 0) {
    const results = await mapLimit(pending, 4, async (p) => ({ ct: p.ct, targets: await c.unreachableFrom(p.ct, p.targets) }));
    pending = results.filter((r) => r.targets.length > 0);
    if (pending.length === 0) break;
    if (Date.now() - t0 > CONVERGE_MS) {
      throw new Error(`${what}: not reachable after ${CONVERGE_MS} ms: ${pending.map((p) => `${p.ct.short} → ${p.targets.join(',')}`).join('; ')}`);
    }
    await sleep(500);
  }
  t.log(`${what}: ${containers.length} containers reach each other (${Date.now() - t0} ms)`);
}

async function waitForNetwork(c: Cluster, name: string, hosts: readonly ClusterHost[]): Promise<void> {
  for (const h of hosts) await waitFor(`${name} listed on ${h.node}`, async () => (await c.networks(h)).some((n) => n.name === name), CONVERGE_MS, 100);
}

/** Store keys (not values) under some prefixes: what "nothing stored" compares. */
async function storedKeys(c: Cluster, prefixes: readonly string[]): Promise<string[]> {
  return (await c.storeEntries()).map((e) => e.key).filter((k) => prefixes.some((p) => k.startsWith(p))).sort();
}

/** Allocated addresses of a pool, from its `ipam/addrs/<pool>/ips/<ip>` keys. */
async function allocated(c: Cluster, poolId: string): Promise<string[]> {
  const prefix = `ipam/addrs/${poolId}/ips/`;
  return (await c.storeEntries()).filter((e) => e.key.startsWith(prefix)).map((e) => e.key.slice(prefix.length)).sort();
}

/** The network's pool ids, from its record in the store. */
async function poolsOf(c: Cluster, nid: string): Promise<{ poolId: string; poolId6?: string }> {
  const rec = (await c.storeEntries()).find((e) => e.key === `networks/${nid}`);
  if (!rec) throw new Error(`no record networks/${nid}`);
  return JSON.parse(rec.value) as { poolId: string; poolId6?: string };
}

async function cleanup(t: ExecutionContext, c: Cluster, network: string, containers: readonly Container[]): Promise<void> {
  const problems = await c.cleanupNetwork(network, containers);
  if (problems.length) t.log(`cleanup of ${network}: ${problems.join('; ')}`);
}

// ------------------------------------------------------------------------------------------ MTU

scenario('MTU: 1350 on every endpoint of a 1400 underlay; -M do -s 1322 crosses hosts, 1323 is refused locally; --mtu honoured, too large refused', async (t, c) => {
  const [h1, h2, h3] = c.hosts as [ClusterHost, ClusterHost, ClusterHost];
  const containers: Container[] = [];
  try {
    const nid = (await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.150.0.0/24', 'mtu1')).trim();
    await waitForNetwork(c, 'mtu1', [h2, h3]);
    t.is((await c.inspect(h3, 'mtu1'))?.mtu, NETWORK_MTU, 'inspect on another host shows the network MTU');
    const eps: Endpoint[] = [];
    for (const [i, h] of [h1, h2, h3].entries()) {
      const ct = await c.addContainer(h, `m1c${i + 1}`);
      containers.push(ct);
      eps.push(await c.connect(ct, 'mtu1'));
    }
    for (const [i, h] of [h1, h2, h3].entries()) {
      t.is(await c.mtu(containers[i]!.name, 'eth0'), NETWORK_MTU, `eth0 of ${containers[i]!.short} on ${h.node}`);
      const ov = c.overlayNetns(h, nid);
      t.is(await c.mtu(ov, 'vxlan0'), NETWORK_MTU, `vxlan0 on ${h.node}`);
      t.is(await c.mtu(ov, 'br0'), NETWORK_MTU, `br0 on ${h.node}`);
    }
    await waitForMesh(t, c, containers, eps.map((e) => e.ip), 'mtu1');
    const full = NETWORK_MTU - ICMP4_OVERHEAD;
    for (const [from, to] of [[1, 0], [2, 0], [0, 2]] as const) {
      const ok = await pingDf(c, containers[from]!, eps[to]!.ip, full);
      t.true(ok.ok, `ping -M do -s ${full} ${containers[from]!.short} → ${containers[to]!.short} crosses hosts: ${ok.output}`);
      const big = await pingDf(c, containers[from]!, eps[to]!.ip, full + 1);
      t.false(big.ok, `-s ${full + 1} does not get through`);
      t.regex(big.output, /message too long/i, `-s ${full + 1} fails in the sender, not silently on the way: ${big.output}`);
    }

    // --mtu N: smaller than the default, honoured on every host
    await c.kvnetOk(h2, 'network', 'create', '--subnet', '10.150.1.0/24', '--mtu', '1300', 'mtu2');
    await waitForNetwork(c, 'mtu2', [h1, h3]);
    const a = await c.connect(containers[0]!, 'mtu2', { name: 'm2a' });
    const b = await c.connect(containers[2]!, 'mtu2', { name: 'm2b' });
    t.is(await c.mtu(containers[0]!.name, a.ifname!), 1300);
    t.is(await c.mtu(containers[2]!.name, b.ifname!), 1300);
    await waitFor('m2a reaches m2b', () => c.ping(containers[0]!, b.ip), CONVERGE_MS, 200);
    t.true((await pingDf(c, containers[0]!, b.ip, 1300 - ICMP4_OVERHEAD)).ok, '1300-byte packets cross');
    t.regex((await pingDf(c, containers[0]!, b.ip, 1300 - ICMP4_OVERHEAD + 1)).output, /message too long/i);

    // an MTU the underlay cannot carry is refused, naming the value and why; nothing is stored
    const before = await storedKeys(c, ['networks/', 'netnames/', 'ipam/pool-table/pools/', 'ipam/vni/ids/']);
    const refused = await c.kvnet(h3, 'network', 'create', '--subnet', '10.150.2.0/24', '--mtu', '1351', 'mtu3');
    t.not(refused.code, 0);
    t.regex(refused.stderr, /invalid mtu 1351: is above 1350, what underlay eth0 carries \(MTU 1400 − 50 bytes of VXLAN over IPv4\)/);
    const tiny = await c.kvnet(h3, 'network', 'create', '--subnet', 'fd00:150::/64', '--mtu', '1000', 'mtu4');
    t.regex(tiny.stderr, /invalid mtu 1000: is below 1280, the minimum for a network with an IPv6 subnet/);
    t.deepEqual(await storedKeys(c, ['networks/', 'netnames/', 'ipam/pool-table/pools/', 'ipam/vni/ids/']), before, 'nothing stored');
  } finally {
    await cleanup(t, c, 'mtu2', []);
    await cleanup(t, c, 'mtu1', containers);
  }
});

// ------------------------------------------------------------------------------------------ IPv6

scenario('dual stack on three hosts with kvnet network connect: ping -6 across hosts, --ip6, exact ARP/NDP/FDB entries, IPv6 egress', async (t, c) => {
  const hosts = c.hosts.slice(0, 3) as ClusterHost[];
  const containers: Container[] = [];
  try {
    const nid = (await c.kvnetOk(hosts[1]!, 'network', 'create', '--subnet', '10.151.0.0/24', '--subnet', 'fd00:151::/64', 'dual')).trim();
    await waitForNetwork(c, 'dual', hosts);
    const net = (await c.inspect(hosts[0]!, 'dual'))!;
    t.like(net, { subnet: '10.151.0.0/24', gateway: '10.151.0.1', subnet6: 'fd00:151::/64', gateway6: 'fd00:151::1', mtu: NETWORK_MTU });
    const eps: Endpoint[] = [];
    for (const [i, h] of hosts.entries()) {
      const ct = await c.addContainer(h, `d${i + 1}`);
      containers.push(ct);
      eps.push(await c.connect(ct, 'dual', i === 0 ? { ip6: 'fd00:151::a1' } : {}));
    }
    t.is(eps[0]!.ip6, 'fd00:151::a1', '--ip6 honoured');
    t.is(new Set(eps.map((e) => e.ip6)).size, 3);
    for (const [i, e] of eps.entries()) {
      t.regex(e.address6 ?? '', /^fd00:151::[0-9a-f]+\/64$/);
      t.is(e.mac, `02:42:0a:97:00:${Number(e.ip.split('.')[3]).toString(16).padStart(2, '0')}`, 'dual stack keeps the IPv4 MAC rule');
      t.deepEqual(await c.addresses6(containers[i]!.name, 'eth0'), [e.ip6], `${containers[i]!.short}'s eth0 has its IPv6 address`);
      t.deepEqual(await c.addresses(containers[i]!.name, 'eth0'), [e.ip]);
    }
    await waitForMesh(t, c, containers, eps.map((e) => e.ip6!), 'dual over IPv6');
    await waitForMesh(t, c, containers, eps.map((e) => e.ip), 'dual over IPv4');
    const p6 = await c.exec(containers[2]!.name, 'ping', '-6', '-c', '2', '-W', '2', '-n', eps[0]!.ip6!);
    t.is(p6.code, 0, `ping -6 d3 → d1 across hosts: ${p6.stdout}`);

    // every host holds exactly the remote endpoints: one ARP and one NDP entry each, one FDB entry each at its host's VTEP
    for (const h of hosts) {
      const remote = eps.filter((e) => e.node !== h.node);
      const k = await c.kernelPeers(h, nid);
      t.deepEqual(
        k.neigh.map((n) => `${n.ip} ${n.mac}`).sort(),
        remote.flatMap((e) => [`${e.ip} ${e.mac}`, `${e.ip6} ${e.mac}`]).sort(),
        `ARP and NDP entries on ${h.node}`,
      );
      t.deepEqual(
        k.fdb.map((f) => `${f.mac} ${f.dst}`).sort(),
        remote.map((e) => `${e.mac} ${c.host(e.node).address}`).sort(),
        `FDB entries on ${h.node}`,
      );
    }

    // IPv6 egress through the gateway bridge (the hosts have IPv6): masqueraded to the outside, which has no route back to the ULA
    const egress6 = await c.addresses6(containers[0]!.name, 'eth1');
    t.is(egress6.length, 1, `d1's gateway bridge interface has one IPv6 address: ${egress6.join(', ')}`);
    t.regex(egress6[0]!, /^fd6b:766e:6777::[0-9a-f]+$/);
    const out = await waitFor('d1 pings the outside over IPv6', () => c.ping(containers[0]!, OUTSIDE6, { waitS: 2 }), CONVERGE_MS, 500).catch(() => false);
    t.true(out, 'IPv6 egress reaches the outside namespace');
  } finally {
    await cleanup(t, c, 'dual', containers);
  }
});

scenario('IPv6-only network on three hosts: IPv6 addresses and MACs, NDP entries only, ping -6 across hosts; --ip is refused', async (t, c) => {
  const hosts = c.hosts.slice(0, 3) as ClusterHost[];
  const containers: Container[] = [];
  try {
    const nid = (await c.kvnetOk(hosts[2]!, 'network', 'create', '--subnet', 'fd00:152::/64', 'six')).trim();
    await waitForNetwork(c, 'six', hosts);
    t.like(await c.inspect(hosts[0]!, 'six'), { subnet: 'fd00:152::/64', gateway: 'fd00:152::1', subnet6: 'fd00:152::/64', mtu: NETWORK_MTU });
    const eps: Endpoint[] = [];
    for (const [i, h] of hosts.entries()) {
      const ct = await c.addContainer(h, `s${i + 1}`);
      containers.push(ct);
      eps.push(await c.connect(ct, 'six'));
    }
    for (const [i, e] of eps.entries()) {
      t.regex(e.ip, /^fd00:152::[0-9a-f]+$/);
      t.is(e.ip6, e.ip);
      t.regex(e.mac, /^06(:[0-9a-f]{2}){5}$/, 'an IPv6-only endpoint gets the 06: MAC');
      t.deepEqual(await c.addresses(containers[i]!.name, 'eth0'), [], 'no IPv4 address');
    }
    t.is(new Set(eps.map((e) => e.mac)).size, 3);
    await waitForMesh(t, c, containers, eps.map((e) => e.ip), 'six');
    for (const h of hosts) {
      const remote = eps.filter((e) => e.node !== h.node);
      const k = await c.kernelPeers(h, nid);
      t.deepEqual(k.neigh.map((n) => `${n.ip} ${n.mac}`).sort(), remote.map((e) => `${e.ip} ${e.mac}`).sort(), `NDP entries only, on ${h.node}`);
      t.deepEqual(k.fdb.map((f) => `${f.mac} ${f.dst}`).sort(), remote.map((e) => `${e.mac} ${c.host(e.node).address}`).sort());
    }
    const extra = await c.addContainer(hosts[0]!, 's4');
    containers.push(extra);
    const r = await c.kvnet(hosts[0]!, 'network', 'connect', 'six', '--netns', extra.path, '--ip', '10.152.0.5');
    t.not(r.code, 0);
    t.regex(r.stderr, /invalid ip "10\.152\.0\.5": network six has no IPv4 subnet \(its subnet is fd00:152::\/64\); use ip6/);
  } finally {
    await cleanup(t, c, 'six', containers);
  }
});

scenario('60 concurrent connects on a dual-stack network: unique addresses in both families, every host programmed, all released on disconnect', async (t, c) => {
  const hosts = c.hosts.slice(0, 3) as ClusterHost[];
  const containers: Container[] = [];
  try {
    const nid = (await c.kvnetOk(hosts[0]!, 'network', 'create', '--subnet', '10.153.0.0/24', '--subnet', 'fd00:153::/64', 'many')).trim();
    await waitForNetwork(c, 'many', hosts);
    const pools = await poolsOf(c, nid);
    for (let i = 0; i < 60; i++) containers.push(await c.addContainer(hosts[i % 3]!, `n${i}`));
    const responses = await Promise.all(containers.map((ct) => c.api(ct.host, 'POST', '/v1/networks/many/endpoints', { netns: ct.path, name: ct.short })));
    t.deepEqual(responses.filter((r) => r.status !== 201).map((r) => JSON.stringify(r.body)), [], 'every connect returns 201');
    const eps = responses.map((r) => r.body as Endpoint);
    t.is(new Set(eps.map((e) => e.ip)).size, 60, '60 distinct IPv4 addresses');
    t.is(new Set(eps.map((e) => e.ip6)).size, 60, '60 distinct IPv6 addresses');
    t.deepEqual(await allocated(c, pools.poolId), eps.map((e) => e.ip).sort(), 'the IPv4 pool holds exactly them');
    t.deepEqual(await allocated(c, pools.poolId6!), eps.map((e) => e.ip6!).sort(), 'the IPv6 pool holds exactly them');
    for (const h of hosts) {
      const remote = eps.filter((e) => e.node !== h.node);
      await waitFor(`${h.node} programs the 40 remote endpoints`, async () => (await c.kernelPeers(h, nid)).fdb.length === remote.length, CONVERGE_MS, 200);
      const k = await c.kernelPeers(h, nid);
      t.deepEqual(k.neigh.map((n) => n.ip).sort(), remote.flatMap((e) => [e.ip, e.ip6!]).sort(), `80 ARP+NDP entries on ${h.node}`);
    }
    // a sample across hosts over IPv6 (the full mesh is scenario-2's job)
    await waitForMesh(t, c, containers.slice(0, 6), eps.slice(0, 6).map((e) => e.ip6!), 'many over IPv6 (sample)');

    const gone = await Promise.all(eps.map((e, i) => c.api(containers[i]!.host, 'DELETE', `/v1/networks/many/endpoints/${e.name}`)));
    t.deepEqual(gone.filter((r) => r.status !== 204).map((r) => JSON.stringify(r.body)), []);
    t.deepEqual(await allocated(c, pools.poolId), [], 'IPv4 addresses released on disconnect');
    t.deepEqual(await allocated(c, pools.poolId6!), [], 'IPv6 addresses released on disconnect');
  } finally {
    await cleanup(t, c, 'many', containers);
  }
});

scenario('bad IPv6 input: a subnet larger than /64, overlapping IPv6 pools, --ip6 outside the subnet: clear errors, nothing stored', async (t, c) => {
  const [h1, h2] = c.hosts as [ClusterHost, ClusterHost];
  const containers: Container[] = [];
  try {
    await c.kvnetOk(h1, 'network', 'create', '--subnet', 'fd00:155::/64', 'ok6');
    await waitForNetwork(c, 'ok6', [h2]);
    const ct = await c.addContainer(h2, 'b1');
    containers.push(ct);
    const watched = ['networks/', 'netnames/', 'endpoints/', 'epnames/', 'ipam/'];
    const before = await storedKeys(c, watched);

    const wide = await c.kvnet(h2, 'network', 'create', '--subnet', 'fd00:154::/48', 'wide');
    t.not(wide.code, 0);
    t.regex(wide.stderr, /invalid subnet "fd00:154::\/48": is larger than \/64: use a \/64 \(or smaller\) IPv6 subnet, or bound dynamic addresses with an ip-range of \/64 or smaller inside it/);
    // a /60 holding ok6's /64 (dynamic addresses bounded to another /64 of it): refused, and the IPv4 pool reserved first released again
    const overlap = await c.kvnet(h2, 'network', 'create', '--subnet', '10.155.0.0/24', '--subnet', 'fd00:155::/60', '--ip-range', 'fd00:155:0:8::/64', 'clash');
    t.not(overlap.code, 0);
    t.regex(overlap.stderr, /subnet fd00:155::\/60 overlaps pool fd00:155::\/64/);
    const outside = await c.kvnet(h2, 'network', 'connect', 'ok6', '--netns', ct.path, '--ip6', 'fd00:999::5');
    t.not(outside.code, 0);
    t.regex(outside.stderr, /invalid ip6 "fd00:999::5": is outside subnet fd00:155::\/64 of network ok6/);
    const notV6 = await c.kvnet(h2, 'network', 'connect', 'ok6', '--netns', ct.path, '--ip6', '10.0.0.1');
    t.regex(notV6.stderr, /invalid ip6 "10\.0\.0\.1": is not an IPv6 address/);
    t.deepEqual(await storedKeys(c, watched), before, 'nothing stored by any refused request');
  } finally {
    await cleanup(t, c, 'ok6', containers);
  }
});

// ------------------------------------------------------------------------------------------ a host with a smaller underlay

scenario('a network whose MTU one host cannot carry: that host says so at start and when a network appears (log, metric, status, inspect)', async (t, c) => {
  const [h1, , h3] = c.hosts as [ClusterHost, ClusterHost, ClusterHost];
  try {
    await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.156.0.0/24', 'wide1');
    await waitForNetwork(c, 'wide1', [h3]);
    // h3's underlay interface shrinks; its agent reads it at start
    await c.exec(h3.name, 'ip', 'link', 'set', 'dev', 'eth0', 'mtu', '1300');
    await c.stopAgent(h3);
    const logStart = c.agentLog(h3).length;
    await c.startAgent(h3);
    const startLog = () => c.agentLog(h3).slice(logStart);
    await waitFor('h3 reports wide1 at start', () => startLog().includes('network wide1: MTU 1350 is above 1250'), CONVERGE_MS, 200);
    const status = JSON.parse(await c.kvnetOk(h3, 'status')) as { underlay: { mtu: number }; defaultMtu: number; networkWarnings: Array<{ name: string; mtu: number; limit: number }> };
    t.is(status.underlay.mtu, 1300);
    t.is(status.defaultMtu, 1250, 'networks h3 creates now get 1250');
    t.deepEqual(status.networkWarnings.map((w) => [w.name, w.mtu, w.limit]), [['wide1', 1350, 1250]]);
    t.regex((await c.inspect(h3, 'wide1'))?.warnings?.[0] ?? '', /network wide1: MTU 1350 is above 1250, what underlay eth0 carries \(MTU 1300 − 50 bytes of VXLAN over IPv4\)/);
    t.is((await c.inspect(h1, 'wide1'))?.warnings, undefined, 'h1 carries it');
    const metrics = await c.exec(h3.name, 'curl', '-s', 'http://127.0.0.1:9473/metrics');
    t.regex(metrics.stdout, /kvnet_networks_over_underlay_mtu 1\b/);

    // a network that appears while h3 runs is reported then, once
    await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.156.1.0/24', 'wide2');
    await waitFor('h3 reports wide2 when it appears', () => startLog().includes('network wide2: MTU 1350 is above 1250'), CONVERGE_MS, 200);
    await sleep(2_000);
    t.is(startLog().split('\n').filter((l) => l.includes('network wide1: MTU 1350 is above 1250')).length, 1, 'reported once, not per reconcile');
    const metrics2 = await c.exec(h3.name, 'curl', '-s', 'http://127.0.0.1:9473/metrics');
    t.regex(metrics2.stdout, /kvnet_networks_over_underlay_mtu 2\b/);
    t.regex(metrics2.stdout, /kvnet_network_warnings_total\{code="KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY"\} 2\b/);
  } finally {
    await c.exec(h3.name, 'ip', 'link', 'set', 'dev', 'eth0', 'mtu', String(UNDERLAY_MTU));
    await c.stopAgent(h3);
    await c.startAgent(h3);
    await cleanup(t, c, 'wide2', []);
    await cleanup(t, c, 'wide1', []);
  }
});

// ------------------------------------------------------------------------------------------ reaping (last: h3 dies)

scenario("a dead host's dual-stack endpoints are reaped: both addresses released, its ARP, NDP and FDB entries gone everywhere", async (t, c) => {
  const [h1, h2, h3] = c.hosts as [ClusterHost, ClusterHost, ClusterHost];
  const containers: Container[] = [];
  try {
    const nid = (await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.157.0.0/24', '--subnet', 'fd00:157::/64', 'reap')).trim();
    await waitForNetwork(c, 'reap', [h2, h3]);
    const pools = await poolsOf(c, nid);
    const live = await c.addContainer(h1, 'r1');
    containers.push(live);
    const epLive = await c.connect(live, 'reap');
    const dead: Endpoint[] = [];
    for (let i = 1; i <= 2; i++) {
      const ct = await c.addContainer(h3, `rd${i}`);
      containers.push(ct);
      dead.push(await c.connect(ct, 'reap'));
    }
    await waitForMesh(t, c, containers, [epLive.ip6!, ...dead.map((e) => e.ip6!)], 'reap over IPv6');
    t.is((await c.kernelPeers(h1, nid)).neigh.length, 4, "h1 has h3's two endpoints in both families");

    await c.destroyHost(h3);
    const killed = Date.now();
    await waitFor("h3's endpoints reaped", async () => !(await c.inspect(h1, 'reap'))?.endpoints.some((e) => e.node === 'h3'), CONVERGE_MS, 200);
    t.log(`reaped ${Date.now() - killed} ms after the kill (h3's TTL ${DYING_TTL})`);
    await waitFor('both addresses of the dead endpoints released', async () => (await allocated(c, pools.poolId6!)).length === 1 && (await allocated(c, pools.poolId)).length === 1, CONVERGE_MS, 500);
    t.deepEqual(await allocated(c, pools.poolId), [epLive.ip]);
    t.deepEqual(await allocated(c, pools.poolId6!), [epLive.ip6!]);
    await waitFor("h1 drops h3's entries", async () => {
      const k = await c.kernelPeers(h1, nid);
      return k.neigh.length === 0 && k.fdb.length === 0;
    }, CONVERGE_MS, 200);
    t.pass();
  } finally {
    await cleanup(t, c, 'reap', containers.filter((ct) => ct.host.alive));
  }
});
