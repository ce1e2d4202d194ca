/**
 * An IPv6 underlay with real agents (issue 15's "plus"): two simulated hosts whose agents advertise
 * their IPv6 underlay addresses (2001:2::/64, links of MTU 1400), so VXLAN runs over IPv6: the default
 * network MTU is 1400 − 70 = 1330, FDB entries point at the IPv6 VTEPs, and a dual-stack overlay carries
 * both families across the hosts. Needs root.
 */

import test from 'ava';
import { Cluster, type ClusterHost, type Container, type Endpoint } from '../support/cluster.ts';
import { waitFor } from '../support/process.ts';

const CONVERGE_MS = 60_000;
/** 1400 − 70 bytes of VXLAN over IPv6. */
const MTU = 1330;

let cluster: Cluster;

test.before(async (t) => {
  t.timeout(5 * 60_000);
  if (process.getuid?.() !== 0) throw new Error('the IPv6 underlay test needs root (network namespaces)');
  cluster = await Cluster.create({ backend: 'local', hosts: 2, underlayMtu: 1400, ipv6: true, advertiseIpv6: true, progress: (m) => t.log(m) });
});

test.afterEach.always((t) => {
  if (!t.passed && cluster) t.log(cluster.diagnostics(40));
});

test.after.always(async () => {
  await cluster?.teardown();
});

test.serial('agents advertising IPv6 underlay addresses: MTU 1400 − 70, FDB entries at IPv6 VTEPs, a dual-stack overlay across hosts', async (t) => {
  t.timeout(5 * 60_000);
  const c = cluster;
  const [h1, h2] = c.hosts as [ClusterHost, ClusterHost];
  const status = JSON.parse(await c.kvnetOk(h1, 'status')) as { advertise: string; underlay: { family: number; mtu: number; overlayMtu: number }; defaultMtu: number };
  t.is(status.advertise, h1.address6!);
  t.like(status.underlay, { family: 6, mtu: 1400, overlayMtu: MTU });
  t.deepEqual((await c.nodes(h2)).map((n) => n.advertise).sort(), [h1.address6!, h2.address6!].sort());

  const nid = (await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.162.0.0/24', '--subnet', 'fd00:162::/64', 'over6')).trim();
  await waitFor('over6 on h2', async () => (await c.networks(h2)).some((n) => n.name === 'over6'), CONVERGE_MS, 100);
  t.is((await c.inspect(h2, 'over6'))?.mtu, MTU);
  const containers: Container[] = [];
  const eps: Endpoint[] = [];
  for (const [i, h] of [h1, h2].entries()) {
    const ct = await c.addContainer(h, `u${i + 1}`);
    containers.push(ct);
    eps.push(await c.connect(ct, 'over6'));
  }
  t.is(await c.mtu(containers[0]!.name, 'eth0'), MTU);
  t.true(await waitFor('u2 pings u1 over IPv6', () => c.ping(containers[1]!, eps[0]!.ip6!), CONVERGE_MS, 200));
  t.true(await waitFor('u2 pings u1 over IPv4', () => c.ping(containers[1]!, eps[0]!.ip), CONVERGE_MS, 200));
  const k = await c.kernelPeers(h1, nid);
  t.deepEqual(k.fdb.map((f) => `${f.mac} ${f.dst}`), [`${eps[1]!.mac} ${h2.address6}`], 'the FDB entry points at the IPv6 VTEP');
  const vx = JSON.parse((await c.exec(c.overlayNetns(h1, nid), 'ip', '-d', '-j', 'link', 'show', 'dev', 'vxlan0')).stdout) as Array<{ linkinfo: { info_data: { local6?: string } } }>;
  t.is(vx[0]!.linkinfo.info_data.local6, h1.address6, 'vxlan0 sends from the IPv6 VTEP');
  const full = await c.exec(containers[1]!.name, 'ping', '-M', 'do', '-s', String(MTU - 28), '-c', '1', '-W', '2', '-n', eps[0]!.ip);
  t.is(full.code, 0, `full-size packets cross the IPv6 underlay: ${full.stdout}${full.stderr}`);
  const big = await c.exec(containers[1]!.name, 'ping', '-M', 'do', '-s', String(MTU - 27), '-c', '1', '-W', '2', '-n', eps[0]!.ip);
  t.regex(`${big.stdout}${big.stderr}`, /message too long/i);
  t.deepEqual(await c.cleanupNetwork('over6', containers), []);
});
