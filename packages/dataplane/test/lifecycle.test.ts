/**
 * The data plane's life on a real kernel (root): refused desired states, Docker mode, sandbox paths
 * outside /run/netns, restarts, vanished containers, neighbour table limits, teardown. Two simulated
 * hosts built once for the file; tests are serial.
 */

import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { macFromIpv4, parseIpv4 } from '@kvnet/netaddr';
import { makeTempDir, startProcess, waitFor, type ManagedProcess } from '../../../test/support/process.ts';
import { resolveConfig } from '../src/config.ts';
import { raiseNeighbourThresholds } from '../src/host-tuning.ts';
import { Dataplane, type DesiredNetwork } from '../src/index.ts';
import { createSimCluster, IS_ROOT, sh, type SimCluster } from './fixtures/sim-cluster.ts';

const kernelTest = IS_ROOT ? test.serial : test.serial.skip;
if (!IS_ROOT) console.warn('lifecycle tests need root (network namespaces); skipped');

let cluster: SimCluster;
const mounts: string[] = [];
const processes: ManagedProcess[] = [];

test.before(async () => {
  if (IS_ROOT) cluster = await createSimCluster({ hosts: 2 });
});

test.after.always(async () => {
  for (const p of processes) await p.kill();
  for (const m of mounts) {
    try {
      sh('umount', m);
    } catch {
      // not mounted (the test failed before mounting)
    }
  }
  if (cluster) await cluster.destroy().catch(() => undefined);
});

function hostNs(i: number): string {
  return cluster.sim.hosts[i]!.name;
}

function desired(id: string, vni: number, cidr: string, endpoints: DesiredNetwork['endpoints'], peers: DesiredNetwork['peers'] = []): DesiredNetwork {
  return { id, vni, subnets: [{ cidr, gateway: cidr.replace(/\.0\/24$/, '.1') }], internal: false, endpoints, peers };
}

function peerOf(ip: string, host: number): DesiredNetwork['peers'][number] {
  return { ip, mac: macFromIpv4(parseIpv4(ip)!), vtep: cluster.sim.hosts[host]!.address };
}

kernelTest('what the kernel refuses (missing sandbox, long name, VNI or port taken) is reported by object and reason; the rest is applied', async (t) => {
  const [dp1, dp2] = cluster.dataplanes as [Dataplane, Dataplane];
  // A foreign VXLAN device already holds VNI 6001 on port 4789 in host 1.
  sh('ip', '-n', hostNs(0), 'link', 'add', 'name', 'foreignvx', 'type', 'vxlan', 'id', '6001', 'dstport', '4789');
  const cx = await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'x1');
  const cy = await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'y1');
  const cz = await cluster.sim.addContainer(cluster.sim.hosts[1]!, 'y2');
  const [netX, netY] = [cluster.newId(), cluster.newId()];
  const [missing, longName, good] = [cluster.newId(), cluster.newId(), cluster.newId()];
  const missingPath = `/run/netns/${cluster.id}doesnotexist`;
  const h1 = {
    networks: [
      desired(netX, 6001, '10.60.1.0/24', [{ id: cluster.newId(), address: '10.60.1.2/24', sandbox: { path: cx.path, ifname: 'eth0' } }]),
      desired(
        netY,
        6002,
        '10.60.2.0/24',
        [
          { id: missing, address: '10.60.2.7/24', sandbox: { path: missingPath, ifname: 'eth0' } },
          { id: longName, address: '10.60.2.8/24', sandbox: { path: cy.path, ifname: 'averyveryverylongname' } },
          { id: good, address: '10.60.2.2/24', sandbox: { path: cy.path, ifname: 'eth0' } },
        ],
        [peerOf('10.60.2.3', 1)],
      ),
    ],
  };
  const r1 = await dp1.apply(h1);
  const byCode = r1.errors.map((e) => [e.code, e.object.network === netY ? 'Y' : e.object.network === netX ? 'X' : '?', e.object.endpoint === missing ? 'missing' : e.object.endpoint === longName ? 'long' : '-']);
  t.deepEqual(
    byCode.sort(),
    [
      ['KVNET_DATAPLANE_INVALID_DESIRED_STATE', 'Y', 'long'],
      ['KVNET_DATAPLANE_KERNEL_REFUSED', 'X', '-'],
      ['KVNET_DATAPLANE_SANDBOX_NOT_FOUND', 'Y', 'missing'],
    ],
    r1.errors.map((e) => e.message).join('\n'),
  );
  const messages = r1.errors.map((e) => e.message).join('\n');
  t.regex(messages, new RegExp(`network ${netX.slice(0, 12)}: cannot create vxlan0 \\(VNI 6001, UDP port 4789, local 198\\.18\\.0\\.1\\) in netns ${hostNs(0)}: A VXLAN device with the specified VNI already exists`));
  t.regex(messages, new RegExp(`endpoint ${missing.slice(0, 12)} of network ${netY.slice(0, 12)}: sandbox ${missingPath} does not exist`));
  t.regex(messages, /sandbox\.ifname "averyveryverylongname" is longer than 15 bytes/);
  t.true(r1.rounds >= 2 && r1.rounds <= 3, `bounded re-plans (${r1.rounds})`);

  // Everything else is in place: network Y works across hosts.
  await dp2.apply({ networks: [desired(netY, 6002, '10.60.2.0/24', [{ id: cluster.newId(), address: '10.60.2.3/24', sandbox: { path: cz.path, ifname: 'eth0' } }], [peerOf('10.60.2.2', 0)])] });
  t.true(await cluster.sim.ping(cy.name, '10.60.2.3'));

  // The same refusal again is the same report, not a growing pile of changes.
  const r2 = await dp1.apply(h1);
  t.deepEqual(r2.errors.map((e) => e.message).sort(), r1.errors.map((e) => e.message).sort());

  // Once the foreign device is gone, network X completes.
  sh('ip', '-n', hostNs(0), 'link', 'del', 'dev', 'foreignvx');
  const r3 = await dp1.apply(h1);
  t.is(r3.errors.filter((e) => e.object.network === netX).length, 0);
  t.truthy((await dp1.readState()).networks.find((n) => n.id === netX)?.links.find((l) => l.name === 'vxlan0'));

  // A UDP port taken by another program: vxlan0 cannot come up; the error says so.
  const port = 4790;
  const holder = startProcess('udp-holder', 'node', ['-e', `require('dgram').createSocket('udp4').bind(${port}, () => console.log('bound'))`], { netns: hostNs(1), pipeStdout: true });
  processes.push(holder);
  let bound = false;
  holder.child.stdout!.once('data', () => (bound = true));
  await waitFor(`a UDP socket on port ${port}`, () => bound, 10_000);
  const dpPort = new Dataplane({ namePrefix: `${cluster.id}p`, hostNetns: hostNs(1), vtep: cluster.sim.hosts[1]!.address, vxlanPort: port, gatewayBridge: false });
  try {
    const cp = await cluster.sim.addContainer(cluster.sim.hosts[1]!, 'p1');
    const netP = cluster.newId();
    const rp = await dpPort.apply({ networks: [desired(netP, 6003, '10.60.3.0/24', [{ id: cluster.newId(), address: '10.60.3.2/24', sandbox: { path: cp.path, ifname: 'eth0' } }])] });
    t.is(rp.errors.length, 1, rp.errors.map((e) => e.message).join('\n'));
    t.regex(rp.errors[0]!.message, new RegExp(`network ${netP.slice(0, 12)}: cannot attach vxlan0 \\(VNI 6003, UDP port ${port}.*Address already in use`));
  } finally {
    await dpPort.destroyAll();
  }
});

kernelTest('Docker mode: the container side waits in the host namespace with its name, MAC and MTU; moving it (as dockerd does) changes nothing', async (t) => {
  const [dp1, dp2] = cluster.dataplanes as [Dataplane, Dataplane];
  const net = cluster.newId();
  const hostIfname = `${cluster.id}dk0`;
  const dockerSide = await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'd1');
  const remote = await cluster.sim.addContainer(cluster.sim.hosts[1]!, 'd2');
  const h1 = { networks: [desired(net, 6101, '10.61.1.0/24', [{ id: cluster.newId(), address: '10.61.1.2/24', handoff: { hostIfname } }], [peerOf('10.61.1.3', 1)])] };
  t.deepEqual((await dp1.apply(h1)).errors, []);
  await dp2.apply({ networks: [desired(net, 6101, '10.61.1.0/24', [{ id: cluster.newId(), address: '10.61.1.3/24', sandbox: { path: remote.path, ifname: 'eth0' } }], [peerOf('10.61.1.2', 0)])] });

  const link = JSON.parse(sh('ip', '-n', hostNs(0), '-json', 'link', 'show', 'dev', hostIfname))[0];
  t.is(link.mtu, 1450);
  t.is(link.address, '02:42:0a:3d:01:02');
  // What dockerd does with a Join answer: move it into the sandbox, rename, address, up.
  sh('ip', '-n', hostNs(0), 'link', 'set', 'dev', hostIfname, 'netns', dockerSide.path);
  for (const args of [['link', 'set', 'dev', hostIfname, 'name', 'eth0'], ['addr', 'add', '10.61.1.2/24', 'dev', 'eth0'], ['link', 'set', 'dev', 'eth0', 'up']]) {
    sh('ip', '-n', dockerSide.name, ...args);
  }
  const again = await dp1.apply(h1);
  t.is(again.changes, 0);
  t.true(await cluster.sim.ping(dockerSide.name, '10.61.1.3'));
});

kernelTest("a sandbox given by an absolute path outside /run/netns (like Docker's /var/run/docker/netns/<id>) is entered by path", async (t) => {
  const [dp1] = cluster.dataplanes as [Dataplane];
  const c = await cluster.sim.addContainer(cluster.sim.hosts[0]!, 's1');
  const dir = makeTempDir('sandbox');
  const path = join(dir, 'netns-1');
  writeFileSync(path, '');
  sh('mount', '--bind', c.path, path);
  mounts.push(path);
  const report = await dp1.apply({ networks: [desired(cluster.newId(), 6201, '10.62.1.0/24', [{ id: cluster.newId(), address: '10.62.1.2/24', sandbox: { path, ifname: 'eth0' } }])] });
  t.deepEqual(report.errors, []);
  const addr = JSON.parse(sh('ip', '-n', c.name, '-json', 'addr', 'show', 'dev', 'eth0'))[0];
  t.deepEqual(addr.addr_info.filter((a: { family: string }) => a.family === 'inet').map((a: { local: string }) => a.local), ['10.62.1.2']);
  t.true(await cluster.sim.ping(c.name, '10.62.1.1'), 'reaches its gateway on br0');
});

kernelTest('a restarted agent (new instance, same prefix) finds its own objects and changes nothing; a vanished container is reported', async (t) => {
  const net = cluster.newId();
  const [a, b] = [await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'r1'), await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'r2')];
  const [ea, eb] = [cluster.newId(), cluster.newId()];
  const state = (withB: boolean) => ({
    networks: [
      desired(
        net,
        6301,
        '10.63.1.0/24',
        [
          { id: ea, address: '10.63.1.2/24', sandbox: { path: a.path, ifname: 'eth0' } },
          ...(withB ? [{ id: eb, address: '10.63.1.3/24', sandbox: { path: b.path, ifname: 'eth0' } }] : []),
        ],
        [peerOf('10.63.1.9', 1)],
      ),
    ],
  });
  await cluster.dataplanes[0]!.apply(state(true));
  const restarted = new Dataplane({ namePrefix: cluster.dataplanes[0]!.prefix, hostNetns: hostNs(0), vtep: cluster.sim.hosts[0]!.address });
  const r = await restarted.apply(state(true));
  t.is(r.changes, 0);

  await cluster.sim.removeContainer(b);
  const gone = await restarted.apply(state(true));
  t.deepEqual(gone.errors.map((e) => [e.code, e.object.endpoint]), [['KVNET_DATAPLANE_SANDBOX_NOT_FOUND', eb]]);
  t.true(await cluster.sim.ping(a.name, '10.63.1.1'), 'the other endpoint is untouched');
  // The kernel removes a dead namespace's devices (and their veth peers) asynchronously.
  const vethCount = async (): Promise<number> => (await restarted.readState()).networks.find((n) => n.id === net)!.links.filter((l) => l.kind === 'veth').length;
  t.truthy(await waitFor("the vanished container's veth to go", async () => (await vethCount()) === 1, 10_000));
  t.is((await restarted.apply(state(false))).changes, 0, 'dropping it from the desired state has nothing left to remove');
});

kernelTest('permanent neighbour entries do not count toward gc_thresh3; the thresholds exist only in the initial netns', async (t) => {
  const thresh3 = Number(readFileSync('/proc/sys/net/ipv4/neigh/default/gc_thresh3', 'utf8'));
  const count = thresh3 <= 16_384 ? thresh3 + 200 : 10_000;
  t.log(`gc_thresh3 = ${thresh3}; programming ${count} permanent peers`);
  const c = await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'gc1');
  const peers = Array.from({ length: count }, (_, i) => ({
    ip: `10.${64 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`,
    mac: `02:43:00:${(Math.floor(i / 65536)).toString(16).padStart(2, '0')}:${(Math.floor(i / 256) % 256).toString(16).padStart(2, '0')}:${(i % 256).toString(16).padStart(2, '0')}`,
    vtep: cluster.sim.hosts[1]!.address,
  })).filter((p) => p.ip !== '10.64.0.1' && p.ip !== '10.64.0.2');
  const net = cluster.newId();
  const report = await cluster.dataplanes[0]!.apply({
    networks: [{ id: net, vni: 6401, subnets: [{ cidr: '10.64.0.0/10', gateway: '10.64.0.1' }], internal: false, endpoints: [{ id: cluster.newId(), address: '10.64.0.2/10', sandbox: { path: c.path, ifname: 'eth0' } }], peers }],
  });
  t.deepEqual(report.errors, []);
  const ov = (await cluster.dataplanes[0]!.readState()).networks.find((n) => n.id === net)!;
  t.is(ov.neighbours.filter((n) => n.permanent).length, peers.length);
  t.is(ov.fdb.length, peers.length);

  const outcomes = await raiseNeighbourThresholds(resolveConfig({ namePrefix: 'zz', hostNetns: hostNs(0), vtep: '198.18.0.1' }), pino({ level: 'silent' }));
  t.true(outcomes.every((o) => o.before === undefined && /only in the initial netns/.test(o.skipped ?? '')));
});

kernelTest('destroyAll removes every object of the prefix and nothing else', async (t) => {
  const [dp1] = cluster.dataplanes as [Dataplane];
  const other = new Dataplane({ namePrefix: `${cluster.id}o`, hostNetns: hostNs(0), vtep: cluster.sim.hosts[0]!.address, gatewayBridge: { name: `${cluster.id}gw` } });
  const c = await cluster.sim.addContainer(cluster.sim.hosts[0]!, 'o1');
  await other.ensureGatewayBridge();
  await other.apply({ networks: [desired(cluster.newId(), 6501, '10.65.1.0/24', [{ id: cluster.newId(), address: '10.65.1.2/24', sandbox: { path: c.path, ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16' } } }])] });

  await dp1.destroyAll();
  const after = await dp1.readState();
  t.deepEqual([after.networks, after.host.links, after.host.gatewayBridge, after.host.iptables, after.host.ip6tables], [[], [], undefined, { filter: [], nat: [] }, { filter: [], nat: [] }]);
  const survivor = await other.readState();
  t.is(survivor.networks.length, 1, "another prefix's objects are untouched");
  t.is(survivor.host.links.length, 1);
  t.true(await cluster.sim.ping(c.name, '172.18.0.1'));
  await other.destroyAll();
  t.deepEqual((await other.readState()).host, { netns: hostNs(0), links: [], iptables: { filter: [], nat: [] }, ip6tables: { filter: [], nat: [] } });
});
