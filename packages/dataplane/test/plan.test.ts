/**
 * The planner as pure data: desired + actual → lines. The fake kernel (fixtures/fake-kernel.ts) plays
 * the plans so "apply, then plan again" can be checked without root; the kernel tests prove the lines
 * on a real kernel.
 */

import test from 'ava';
import { endpointMac, parseIp } from '@kvnet/netaddr';
import { Dataplane, checkNetworkMtu, type DataplaneConfig, type DesiredEndpoint, type DesiredNetwork, type DesiredState, type Plan } from '../src/index.ts';
import { executePlan } from '../src/executor.ts';
import { FakeKernel } from './fixtures/fake-kernel.ts';

const PREFIX = 'kt';
const HOST = 'host1';
const VTEP = '198.18.0.1';
const NET_A = 'a'.repeat(64);
const NET_B = 'b'.repeat(64);
const EP1 = '1'.repeat(64);
const EP2 = '2'.repeat(64);
const GW = 'docker_gwbridge';

function dataplane(extra: Partial<DataplaneConfig> = {}): Dataplane {
  return new Dataplane({ namePrefix: PREFIX, hostNetns: HOST, vtep: VTEP, ...extra });
}

function sandboxEndpoint(id: string, address: string, sandbox: string, extra: Partial<DesiredEndpoint> = {}): DesiredEndpoint {
  return { id, address, sandbox: { path: `/run/netns/${sandbox}`, ifname: 'eth0' }, ...extra };
}

function network(id: string, extra: Partial<DesiredNetwork> = {}): DesiredNetwork {
  return {
    id,
    vni: 4097,
    subnets: [{ cidr: '10.0.1.0/24', gateway: '10.0.1.1' }],
    internal: false,
    endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'c1')],
    peers: [{ ip: '10.0.1.3', mac: '02:42:0a:00:01:03', vtep: '198.18.0.2' }],
    ...extra,
  };
}

function kernel(): FakeKernel {
  const k = new FakeKernel([HOST, 'c1', 'c2', 'c3']);
  k.addBridge(HOST, GW, '172.18.0.1/16');
  return k;
}

function state(k: FakeKernel) {
  return k.state(PREFIX, { kind: 'name', name: HOST }, GW);
}

async function apply(k: FakeKernel, dp: Dataplane, desired: DesiredState): Promise<Plan> {
  const plan = dp.plan(desired, state(k));
  const result = await executePlan(plan, { runner: k.runner });
  if (result.errors.length > 0) throw new Error(result.errors.map((e) => e.message).join('\n'));
  return plan;
}

function lines(plan: Plan, stage?: string): string[] {
  return plan.stages.filter((s) => !stage || s.name === stage).flatMap((s) => s.batches.flatMap((b) => b.ops.map((o) => o.line)));
}

function peers(n: number, vtep = '198.18.0.2'): DesiredNetwork['peers'] {
  return Array.from({ length: n }, (_, i) => {
    const ip = `10.1.${Math.floor(i / 256)}.${i % 256}`;
    return { ip, mac: `02:42:0a:01:${(Math.floor(i / 256)).toString(16).padStart(2, '0')}:${(i % 256).toString(16).padStart(2, '0')}`, vtep };
  });
}

test('a new network is planned as the exact lines, stage by stage and namespace by namespace', (t) => {
  const plan = dataplane().plan({ networks: [network(NET_A)] }, state(kernel()));
  const ns = `${PREFIX}-${NET_A}`;
  t.deepEqual(plan.errors, []);
  t.deepEqual(
    plan.stages.map((s) => [s.name, s.batches.map((b) => `${b.tool}@${b.netns.kind === 'self' ? 'self' : b.netns.kind === 'name' ? b.netns.name : b.netns.path}`)]),
    [
      ['namespaces', ['ip@self']],
      ['create', [`ip@${HOST}`]],
      ['configure', [`ip@${ns}`, `bridge@${ns}`]],
      ['sandbox', ['ip@c1']],
      ['mark', [`ip@${ns}`]],
    ],
  );
  t.deepEqual(lines(plan, 'namespaces'), [`netns add ${ns}`]);
  t.deepEqual(lines(plan, 'create'), [
    `link add name vxlan0 mtu 1450 netns ${ns} type vxlan id 4097 local ${VTEP} dstport 4789 nolearning proxy`,
    `link add name ve111111111111 mtu 1450 netns ${ns} type veth peer name eth0 mtu 1450 address 02:42:0a:00:01:02 netns /run/netns/c1`,
  ]);
  t.deepEqual(lines(plan, 'configure'), [
    'link add name br0 mtu 1450 type bridge',
    'addr add 10.0.1.1/24 dev br0',
    'link set dev br0 mtu 1450 up',
    'link set dev vxlan0 mtu 1450 master br0 up',
    'link set dev ve111111111111 master br0 up',
    'neigh replace 10.0.1.3 lladdr 02:42:0a:00:01:03 dev vxlan0 nud permanent',
    'fdb replace 02:42:0a:00:01:03 dev vxlan0 dst 198.18.0.2 self permanent',
  ]);
  t.deepEqual(lines(plan, 'sandbox'), ['link set dev eth0 up', 'addr replace 10.0.1.2/24 dev eth0']);
  t.regex(lines(plan, 'mark')[0]!, new RegExp(`^link set dev ve111111111111 alias kvnet:ep:${EP1}:[0-9a-f]{12}$`));
  t.is(plan.changes, 13);
});

test('applying a plan and planning again yields no change, for every kind of object', async (t) => {
  const k = kernel();
  const dp = dataplane();
  const desired: DesiredState = {
    networks: [
      network(NET_A, {
        subnets: [
          { cidr: '10.0.1.0/24', gateway: '10.0.1.1' },
          { cidr: '10.0.2.0/24', gateway: '10.0.2.1' },
        ],
        endpoints: [
          sandboxEndpoint(EP1, '10.0.1.2/24', 'c1', { sandbox: { path: '/run/netns/c1', ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16' } } }),
          { id: EP2, address: '10.0.2.5/24', mac: '02:AA:BB:CC:DD:EE', handoff: { hostIfname: 'kvtmp0' } },
        ],
        peers: peers(50),
      }),
      network(NET_B, { vni: 4098, internal: true, endpoints: [sandboxEndpoint('3'.repeat(64), '10.0.1.9/24', 'c2')] }),
    ],
  };
  const first = await apply(k, dp, desired);
  t.true(first.changes > 100);
  const second = dp.plan(desired, state(k));
  t.deepEqual(lines(second), []);
  t.is(second.changes, 0);
  t.deepEqual(second.errors, []);
});

test('one peer added among 1000 is one neighbour line and one FDB line', async (t) => {
  const k = kernel();
  const dp = dataplane();
  const many = peers(1001);
  await apply(k, dp, { networks: [network(NET_A, { peers: many.slice(0, 1000) })] });
  const plan = dp.plan({ networks: [network(NET_A, { peers: many })] }, state(k));
  const last = many[1000]!;
  t.deepEqual(lines(plan), [
    `neigh replace ${last.ip} lladdr ${last.mac} dev vxlan0 nud permanent`,
    `fdb replace ${last.mac} dev vxlan0 dst ${last.vtep} self permanent`,
  ]);
  t.deepEqual(plan.stages.map((s) => s.name), ['configure']);
});

test('a moved peer is a replace of exactly the entries that changed; a removed peer is one delete per table', async (t) => {
  const k = kernel();
  const dp = dataplane();
  const base = peers(3);
  await apply(k, dp, { networks: [network(NET_A, { peers: base })] });

  const newHost = base.map((p, i) => (i === 0 ? { ...p, vtep: '198.18.0.3' } : p));
  t.deepEqual(lines(dp.plan({ networks: [network(NET_A, { peers: newHost })] }, state(k))), [
    `fdb replace ${base[0]!.mac} dev vxlan0 dst 198.18.0.3 self permanent`,
  ]);

  const newMac = base.map((p, i) => (i === 1 ? { ...p, mac: '02:42:99:99:99:99' } : p));
  t.deepEqual(lines(dp.plan({ networks: [network(NET_A, { peers: newMac })] }, state(k))), [
    `neigh replace ${base[1]!.ip} lladdr 02:42:99:99:99:99 dev vxlan0 nud permanent`,
    `fdb del ${base[1]!.mac} dev vxlan0 self`,
    `fdb replace 02:42:99:99:99:99 dev vxlan0 dst ${base[1]!.vtep} self permanent`,
  ]);

  const removed = [base[0]!, base[2]!];
  const plan = await apply(k, dp, { networks: [network(NET_A, { peers: removed })] });
  t.deepEqual(lines(plan), [`neigh del ${base[1]!.ip} dev vxlan0`, `fdb del ${base[1]!.mac} dev vxlan0 self`]);
  const after = state(k).networks[0]!;
  t.deepEqual(after.neighbours.map((n) => n.ip).sort(), removed.map((p) => p.ip).sort());
  t.deepEqual(after.fdb.map((e) => e.mac).sort(), removed.map((p) => p.mac).sort());
});

test('a network whose last endpoint left is removed: explicit link deletes, then the namespace', async (t) => {
  const k = kernel();
  const dp = dataplane();
  await apply(k, dp, { networks: [network(NET_A), network(NET_B, { vni: 4098, endpoints: [sandboxEndpoint(EP2, '10.0.1.4/24', 'c2')] })] });
  const plan = await apply(k, dp, { networks: [network(NET_B, { vni: 4098, endpoints: [sandboxEndpoint(EP2, '10.0.1.4/24', 'c2')] })] });
  const ns = `${PREFIX}-${NET_A}`;
  t.deepEqual(lines(plan, 'delete').sort(), ['link del dev ve111111111111', 'link del dev vxlan0']);
  t.deepEqual(lines(plan, 'namespaces'), [`netns del ${ns}`]);
  t.false(k.namespaces.has(ns));
  t.false(k.ns('c1').links.has('eth0'), 'the container side went with its overlay side');
  t.true(k.namespaces.has(`${PREFIX}-${NET_B}`));
});

test('a disconnected endpoint loses its veth pair and nothing else', async (t) => {
  const k = kernel();
  const dp = dataplane();
  const two = network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'c1'), sandboxEndpoint(EP2, '10.0.1.4/24', 'c2')] });
  await apply(k, dp, { networks: [two] });
  const plan = await apply(k, dp, { networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'c1')] })] });
  t.deepEqual(lines(plan), ['link del dev ve222222222222']);
  t.false(k.ns('c2').links.has('eth0'));
  t.true(k.ns('c1').links.has('eth0'));
});

test('vxlan0 with another VNI, port or VTEP is recreated and every peer programmed again', async (t) => {
  const k = kernel();
  await apply(k, dataplane(), { networks: [network(NET_A, { peers: peers(4) })] });
  for (const [what, dp, desired] of [
    ['vni', dataplane(), network(NET_A, { vni: 5000, peers: peers(4) })],
    ['port', dataplane({ vxlanPort: 8472 }), network(NET_A, { peers: peers(4) })],
    ['vtep', dataplane({ vtep: '198.18.0.9' }), network(NET_A, { peers: peers(4) })],
  ] as const) {
    const plan = dp.plan({ networks: [desired] }, state(k));
    t.deepEqual(lines(plan, 'delete'), ['link del dev vxlan0'], what);
    t.is(lines(plan, 'create').length, 1, what);
    t.is(lines(plan).filter((l) => l.startsWith('neigh replace')).length, 4, what);
    t.is(lines(plan).filter((l) => l.startsWith('fdb replace')).length, 4, what);
  }
});

test('an endpoint whose settings changed, or that was left half-made, is recreated', async (t) => {
  const k = kernel();
  const dp = dataplane();
  await apply(k, dp, { networks: [network(NET_A)] });
  const moved = dp.plan({ networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.7/24', 'c1')] })] }, state(k));
  t.deepEqual(lines(moved, 'delete'), ['link del dev ve111111111111']);
  t.regex(lines(moved, 'create')[0]!, /peer name eth0 mtu 1450 address 02:42:0a:00:01:07 netns \/run\/netns\/c1$/);

  // A crash between creating the pair and writing the marker leaves an unmarked veth.
  k.ns(`${PREFIX}-${NET_A}`).links.get('ve111111111111')!.alias = undefined;
  const repaired = dp.plan({ networks: [network(NET_A)] }, state(k));
  t.deepEqual(lines(repaired, 'delete'), ['link del dev ve111111111111']);
  t.is(lines(repaired, 'create').length, 1);
  t.is(lines(repaired, 'mark').length, 1);
});

test('MTU is the underlay MTU − 50 unless the network sets one; the MAC is 02:42 + IPv4 unless given', (t) => {
  const big = dataplane({ underlayMtu: 9000 }).plan({ networks: [network(NET_A)] }, state(kernel()));
  t.true(lines(big, 'create').every((l) => l.includes(' mtu 8950 ')));
  const own = dataplane().plan({ networks: [network(NET_A, { mtu: 1400 })] }, state(kernel()));
  t.true(lines(own, 'create').every((l) => l.includes(' mtu 1400 ')));
  const mac = dataplane().plan({ networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.200/24', 'c1', { mac: '02:AB:CD:00:00:01' })] })] }, state(kernel()));
  t.regex(lines(mac, 'create')[1]!, / address 02:ab:cd:00:00:01 /);
  const derived = dataplane().plan({ networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.200/24', 'c1')] })] }, state(kernel()));
  t.regex(lines(derived, 'create')[1]!, / address 02:42:0a:00:01:c8 /);
});

test('a network with two subnets: the bridge holds both gateways, containers get an on-link route to the other', (t) => {
  const plan = dataplane().plan(
    {
      networks: [
        network(NET_A, {
          subnets: [
            { cidr: '10.0.1.0/24', gateway: '10.0.1.1' },
            { cidr: '10.0.2.0/24', gateway: '10.0.2.1' },
          ],
        }),
      ],
    },
    state(kernel()),
  );
  t.true(lines(plan, 'configure').includes('addr add 10.0.1.1/24 dev br0'));
  t.true(lines(plan, 'configure').includes('addr add 10.0.2.1/24 dev br0'));
  t.deepEqual(lines(plan, 'sandbox'), ['link set dev eth0 up', 'addr replace 10.0.1.2/24 dev eth0', 'route replace 10.0.2.0/24 dev eth0']);
});

test('egress: a second interface on the gateway bridge, isolated, with the default route; none on internal networks', (t) => {
  const egress = { path: '/run/netns/c1', ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16' } };
  const plan = dataplane().plan({ networks: [network(NET_A, { endpoints: [{ id: EP1, address: '10.0.1.2/24', sandbox: egress }] })] }, state(kernel()));
  const host = `${PREFIX}-g1111111`;
  t.true(lines(plan, 'create').includes(`link add name ${host} mtu 1500 master ${GW} up type veth peer name eth1 mtu 1500 netns /run/netns/c1`));
  t.true(lines(plan, 'configure').includes(`link set dev ${host} type bridge_slave isolated on`));
  t.deepEqual(lines(plan, 'sandbox').slice(-3), ['link set dev eth1 up', 'addr replace 172.18.0.2/16 dev eth1', 'route replace default via 172.18.0.1 dev eth1']);

  const internal = dataplane().plan({ networks: [network(NET_A, { internal: true, endpoints: [{ id: EP1, address: '10.0.1.2/24', sandbox: egress }] })] }, state(kernel()));
  t.false(lines(internal).some((l) => l.includes('eth1') || l.includes('default')));
  t.is(internal.errors.length, 1);
  t.is(internal.errors[0]!.code, 'KVNET_DATAPLANE_INVALID_DESIRED_STATE');
  t.regex(internal.errors[0]!.message, /endpoint 111111111111 of network aaaaaaaaaaaa.*internal network/);
  t.true(lines(internal, 'create').some((l) => l.includes('peer name eth0')), 'the overlay interface is still made');

  const wrongSubnet = dataplane().plan(
    { networks: [network(NET_A, { endpoints: [{ id: EP1, address: '10.0.1.2/24', sandbox: { ...egress, egress: { ifname: 'eth1', address: '172.19.0.2/16' } } }] })] },
    state(kernel()),
  );
  t.regex(wrongSubnet.errors[0]!.message, /172\.19\.0\.2\/16.*gateway bridge subnet 172\.18\.0\.0\/16/);

  const noBridge = dataplane({ gatewayBridge: false }).plan({ networks: [network(NET_A, { endpoints: [{ id: EP1, address: '10.0.1.2/24', sandbox: egress }] })] }, state(kernel()));
  t.regex(noBridge.errors[0]!.message, /gatewayBridge: false/);
});

test('Docker mode: the container side is left in the host namespace under the requested name, with MAC and MTU', (t) => {
  const plan = dataplane().plan({ networks: [network(NET_A, { endpoints: [{ id: EP1, address: '10.0.1.2/24', handoff: { hostIfname: 'kv1234abc' } }] })] }, state(kernel()));
  t.deepEqual(lines(plan, 'create')[1], `link add name ve111111111111 mtu 1450 netns ${PREFIX}-${NET_A} type veth peer name kv1234abc mtu 1450 address 02:42:0a:00:01:02`);
  t.deepEqual(lines(plan, 'sandbox'), []);
});

test('what the kernel would refuse is refused up front, naming the object and the reason; the rest is planned', (t) => {
  const ok = network(NET_B, { vni: 4098, endpoints: [sandboxEndpoint(EP2, '10.0.1.4/24', 'c2')] });
  const cases: [string, DesiredNetwork, RegExp, string][] = [
    ['long ifname', network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'c1', { sandbox: { path: '/run/netns/c1', ifname: 'averyveryverylongname' } })] }), /endpoint 111111111111 of network aaaaaaaaaaaa: sandbox\.ifname "averyveryverylongname" is longer than 15 bytes/, 'KVNET_DATAPLANE_INVALID_DESIRED_STATE'],
    ['vni', network(NET_A, { vni: 12 }), /network aaaaaaaaaaaa: vni 12 must be an integer in 256…16777215/, 'KVNET_DATAPLANE_INVALID_DESIRED_STATE'],
    ['vni twice', network(NET_A, { vni: 4098 }), /VNI 4098 is already used by network bbbb/, 'KVNET_DATAPLANE_CONFLICT'],
    ['address', network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.9.1.2/24', 'c1')] }), /address "10\.9\.1\.2\/24" is in none of the network's subnets 10\.0\.1\.0\/24/, 'KVNET_DATAPLANE_INVALID_DESIRED_STATE'],
    ['relative sandbox', network(NET_A, { endpoints: [{ id: EP1, address: '10.0.1.2/24', sandbox: { path: 'netns/c1', ifname: 'eth0' } }] }), /sandbox\.path "netns\/c1" is not an absolute path/, 'KVNET_DATAPLANE_INVALID_DESIRED_STATE'],
    ['gateway', network(NET_A, { subnets: [{ cidr: '10.0.1.0/24', gateway: '10.0.2.1' }] }), /gateway "10\.0\.2\.1" is not a host address of subnet 10\.0\.1\.0\/24/, 'KVNET_DATAPLANE_INVALID_DESIRED_STATE'],
  ];
  for (const [what, bad, message, code] of cases) {
    const desired = { networks: what === 'vni twice' ? [ok, bad] : [bad, ok] };
    const plan = dataplane().plan(desired, state(kernel()));
    t.is(plan.errors.length, 1, what);
    t.is(plan.errors[0]!.code, code, what);
    t.regex(plan.errors[0]!.message, message, what);
    t.true(lines(plan).includes(`netns add ${PREFIX}-${NET_B}`), `${what}: the valid network is still planned`);
  }
});

test('a sandbox that does not exist is reported and only its endpoint is skipped', (t) => {
  const desired = { networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'gone'), sandboxEndpoint(EP2, '10.0.1.4/24', 'c2')] })] };
  const plan = dataplane().plan(desired, { ...state(kernel()), sandboxes: { '/run/netns/gone': 'missing', '/run/netns/c2': 'netns' } });
  t.is(plan.errors.length, 1);
  t.is(plan.errors[0]!.code, 'KVNET_DATAPLANE_SANDBOX_NOT_FOUND');
  t.regex(plan.errors[0]!.message, /endpoint 111111111111 of network aaaaaaaaaaaa: sandbox \/run\/netns\/gone does not exist/);
  t.false(lines(plan).some((l) => l.includes('gone')));
  t.true(lines(plan).some((l) => l.includes('netns /run/netns/c2')));
});

test('a refused network or endpoint keeps what it has in the kernel', async (t) => {
  const k = kernel();
  const dp = dataplane();
  await apply(k, dp, { networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'c1'), sandboxEndpoint(EP2, '10.0.1.4/24', 'c2')] })] });
  const badNet = dp.plan({ networks: [network(NET_A, { vni: 1 })] }, state(k));
  t.deepEqual(lines(badNet), [], 'no netns del for a network that was only refused');
  const badEp = dp.plan({ networks: [network(NET_A, { endpoints: [sandboxEndpoint(EP1, '10.0.1.2/24', 'c1'), sandboxEndpoint(EP2, 'bogus', 'c2')] })] }, state(k));
  t.deepEqual(lines(badEp), [], 'no link del for an endpoint that was only refused');
  t.is(badEp.errors.length, 1);
});

test('peer conflicts: the first entry wins and the rest are reported', (t) => {
  const plan = dataplane().plan(
    {
      networks: [
        network(NET_A, {
          peers: [
            { ip: '10.0.1.3', mac: '02:42:0a:00:01:03', vtep: '198.18.0.2' },
            { ip: '10.0.1.3', mac: '02:42:0a:00:01:33', vtep: '198.18.0.3' },
            { ip: '10.0.1.4', mac: '02:42:0a:00:01:03', vtep: '198.18.0.3' },
            { ip: '10.0.1.2', mac: '02:42:0a:00:01:99', vtep: '198.18.0.2' },
            { ip: '10.0.1.5', mac: '02:42:0a:00:01:05', vtep: VTEP },
            { ip: '10.0.1.6', mac: 'zz', vtep: '198.18.0.2' },
          ],
        }),
      ],
    },
    state(kernel()),
  );
  t.deepEqual(
    lines(plan, 'configure').filter((l) => l.startsWith('neigh') || l.startsWith('fdb')),
    ['neigh replace 10.0.1.3 lladdr 02:42:0a:00:01:03 dev vxlan0 nud permanent', 'fdb replace 02:42:0a:00:01:03 dev vxlan0 dst 198.18.0.2 self permanent'],
  );
  t.deepEqual(
    plan.errors.map((e) => [e.code, (e.object as { peer?: string }).peer]),
    [
      ['KVNET_DATAPLANE_CONFLICT', '10.0.1.3'],
      ['KVNET_DATAPLANE_CONFLICT', '10.0.1.4'],
      ['KVNET_DATAPLANE_CONFLICT', '10.0.1.2'],
      ['KVNET_DATAPLANE_CONFLICT', '10.0.1.5'],
      ['KVNET_DATAPLANE_INVALID_DESIRED_STATE', '10.0.1.6'],
    ],
  );
});

test('names: one namespace per network id (never shared), host-side names fit 15 bytes and carry the prefix', (t) => {
  const twin = `${'a'.repeat(63)}b`;
  const plan = dataplane({ namePrefix: 'abcdef' }).plan(
    { networks: [network(NET_A), network(twin, { vni: 4098, endpoints: [sandboxEndpoint(EP2, '10.0.1.4/24', 'c2', { sandbox: { path: '/run/netns/c2', ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.3/16' } } })] })] },
    { ...state(kernel()), prefix: 'abcdef' },
  );
  t.deepEqual(lines(plan, 'namespaces'), [`netns add abcdef-${NET_A}`, `netns add abcdef-${twin}`]);
  const egressLine = lines(plan, 'create').find((l) => l.includes('master docker_gwbridge'))!;
  t.regex(egressLine, /^link add name abcdef-g2222222 /);
  t.is('abcdef-g2222222'.length, 15);
});

test('invalid configs are refused at construction with the field and the reason', (t) => {
  t.throws(() => dataplane({ namePrefix: 'toolong7' }), { code: 'KVNET_DATAPLANE_INVALID_CONFIG', message: /namePrefix="toolong7"/ });
  t.throws(() => dataplane({ namePrefix: 'Ab' }), { message: /lowercase/ });
  t.throws(() => dataplane({ vtep: '300.1.1.1' }), { message: /vtep="300.1.1.1": is not an IPv4 or IPv6 address/ });
  t.throws(() => dataplane({ gatewayBridge: { name: 'a-very-long-bridge-name' } }), { message: /longer than 15 bytes/ });
  t.throws(() => dataplane({ underlayMtu: 100 }), { message: /underlayMtu=100/ });
  t.throws(() => dataplane({ hostNetns: 'rel/path' }), { message: /hostNetns="rel\/path": is not an absolute path/ });
});

test('endpoints that would share an interface name, address or MAC: the first keeps it, the second is refused', (t) => {
  const twin = `${'1'.repeat(12)}${'9'.repeat(52)}`;
  const plan = dataplane().plan(
    {
      networks: [
        network(NET_A, {
          endpoints: [
            sandboxEndpoint(EP1, '10.0.1.2/24', 'c1'),
            sandboxEndpoint(twin, '10.0.1.5/24', 'c2'),
            sandboxEndpoint(EP2, '10.0.1.2/24', 'c3'),
          ],
        }),
      ],
    },
    state(kernel()),
  );
  t.deepEqual(
    plan.errors.map((e) => e.message),
    [
      `endpoint 111111111111 of network aaaaaaaaaaaa: overlay interface name ve111111111111 is already taken by endpoint ${EP1}`,
      `endpoint 222222222222 of network aaaaaaaaaaaa: address 10.0.1.2 is already taken by endpoint ${EP1}`,
    ],
  );
  t.is(lines(plan, 'create').filter((l) => l.includes('type veth')).length, 1);
});

test('an overlay namespace that cannot be read is recreated', (t) => {
  const broken = { ...state(kernel()), networks: [{ id: NET_A, netns: `${PREFIX}-${NET_A}`, readError: 'Cannot open network namespace', links: [], neighbours: [], fdb: [] }] };
  const plan = dataplane().plan({ networks: [network(NET_A)] }, broken);
  t.deepEqual(lines(plan, 'namespaces'), [`netns del ${PREFIX}-${NET_A}`, `netns add ${PREFIX}-${NET_A}`]);
  t.true(lines(plan, 'create').some((l) => l.includes('type vxlan')));
});

// ---- IPv6, dual stack, MTU ----

const NET_6 = '6'.repeat(64);
const V6_SUBNET = { cidr: 'fd00:1::/64', gateway: 'fd00:1::1' };

test('dual stack: br0 holds both gateways (IPv6 without DAD), the endpoint both addresses, the MAC stays IPv4-derived; a peer is an ARP and an NDP entry and one FDB entry', (t) => {
  const plan = dataplane().plan(
    {
      networks: [
        network(NET_A, {
          subnets: [{ cidr: '10.0.1.0/24', gateway: '10.0.1.1' }, V6_SUBNET],
          endpoints: [{ id: EP1, address: '10.0.1.2/24', addressIPv6: 'FD00:1:0::2/64', sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }],
          peers: [{ ip: '10.0.1.3', ipv6: 'fd00:1::3', mac: '02:42:0a:00:01:03', vtep: '198.18.0.2' }],
        }),
      ],
    },
    state(kernel()),
  );
  t.deepEqual(plan.errors, []);
  t.deepEqual(lines(plan, 'configure'), [
    'link add name br0 mtu 1450 type bridge',
    'addr add 10.0.1.1/24 dev br0',
    'addr add fd00:1::1/64 dev br0 nodad',
    'link set dev br0 mtu 1450 up',
    'link set dev vxlan0 mtu 1450 master br0 up',
    'link set dev ve111111111111 master br0 up',
    'neigh replace 10.0.1.3 lladdr 02:42:0a:00:01:03 dev vxlan0 nud permanent',
    'neigh replace fd00:1::3 lladdr 02:42:0a:00:01:03 dev vxlan0 nud permanent',
    'fdb replace 02:42:0a:00:01:03 dev vxlan0 dst 198.18.0.2 self permanent',
  ]);
  t.regex(lines(plan, 'create')[1]!, / address 02:42:0a:00:01:02 netns \/run\/netns\/c1$/, 'dual stack keeps the IPv4-derived MAC');
  t.deepEqual(lines(plan, 'sandbox'), ['link set dev eth0 up', 'addr replace 10.0.1.2/24 dev eth0', 'addr replace fd00:1::2/64 dev eth0 nodad']);
});

test('an IPv6-only network: hashed 06: MAC, NDP entries only, on-link route to a second IPv6 subnet; applying then planning again changes nothing', async (t) => {
  const k = kernel();
  const dp = dataplane();
  const peerMac = endpointMac({ ipv6: parseIp('fd00:1::3')! })!;
  const desired: DesiredState = {
    networks: [
      network(NET_6, {
        vni: 4600,
        subnets: [V6_SUBNET, { cidr: 'fd00:2::/64', gateway: 'fd00:2::1' }],
        endpoints: [{ id: EP1, addressIPv6: 'fd00:1::2/64', sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }],
        peers: [{ ipv6: 'fd00:1::3', mac: peerMac, vtep: '198.18.0.2' }],
      }),
    ],
  };
  const plan = await apply(k, dp, desired);
  const ownMac = endpointMac({ ipv6: parseIp('fd00:1::2')! })!;
  t.regex(ownMac, /^06:/);
  t.regex(lines(plan, 'create')[1]!, new RegExp(` address ${ownMac} netns /run/netns/c1$`));
  t.deepEqual(lines(plan, 'sandbox'), ['link set dev eth0 up', 'addr replace fd00:1::2/64 dev eth0 nodad', 'route replace fd00:2::/64 dev eth0']);
  t.deepEqual(lines(plan).filter((l) => l.startsWith('neigh') || l.startsWith('fdb')), [
    `neigh replace fd00:1::3 lladdr ${peerMac} dev vxlan0 nud permanent`,
    `fdb replace ${peerMac} dev vxlan0 dst 198.18.0.2 self permanent`,
  ]);
  t.false(lines(plan).some((l) => /\b10\.\d+\.\d+\.\d+/.test(l)), 'no IPv4 line');
  const again = dp.plan(desired, state(k));
  t.deepEqual([lines(again), again.errors], [[], []]);
  // a peer moving to another host and one leaving are one replace and one delete
  const moved = dp.plan({ networks: [{ ...desired.networks[0]!, peers: [{ ipv6: 'fd00:1::3', mac: peerMac, vtep: '198.18.0.7' }] }] }, state(k));
  t.deepEqual(lines(moved), [`fdb replace ${peerMac} dev vxlan0 dst 198.18.0.7 self permanent`]);
  const gone = dp.plan({ networks: [{ ...desired.networks[0]!, peers: [] }] }, state(k));
  t.deepEqual(lines(gone), ['neigh del fd00:1::3 dev vxlan0', `fdb del ${peerMac} dev vxlan0 self`]);
});

test('an IPv6 VTEP: vxlan0 sends from it, FDB entries point at IPv6 VTEPs, the default MTU is underlay − 70; an IPv4 VTEP among them is refused', (t) => {
  const dp = dataplane({ vtep: '2001:2::1', underlayMtu: 1400 });
  t.is(dp.overlayMtu, 1330);
  const plan = dp.plan(
    {
      networks: [
        network(NET_A, {
          peers: [
            { ip: '10.0.1.3', mac: '02:42:0a:00:01:03', vtep: '2001:2:0::2' },
            { ip: '10.0.1.4', mac: '02:42:0a:00:01:04', vtep: '198.18.0.2' },
          ],
        }),
      ],
    },
    state(kernel()),
  );
  t.is(lines(plan, 'create')[0], `link add name vxlan0 mtu 1330 netns ${PREFIX}-${NET_A} type vxlan id 4097 local 2001:2::1 dstport 4789 nolearning proxy`);
  t.true(lines(plan, 'configure').includes('fdb replace 02:42:0a:00:01:03 dev vxlan0 dst 2001:2::2 self permanent'));
  t.false(lines(plan).some((l) => l.includes('10.0.1.4')));
  t.deepEqual(plan.errors.map((e) => e.message), [
    'peer 10.0.1.4 of network aaaaaaaaaaaa: vtep "198.18.0.2" is not an IPv6 address (this host\'s VTEP 2001:2::1 is IPv6; one VXLAN device sends over one family)',
  ]);
});

test('MTU: underlay − 50 by default; below 68, or below 1280 with an IPv6 subnet, refused; above what the underlay carries planned with a warning', (t) => {
  const onSmall = dataplane({ underlayMtu: 1400 });
  t.is(onSmall.overlayMtu, 1350);
  const dflt = onSmall.plan({ networks: [network(NET_A)] }, state(kernel()));
  t.true(lines(dflt, 'create').every((l) => l.includes(' mtu 1350 ')));
  t.deepEqual([dflt.errors, dflt.warnings], [[], []]);

  const tooSmall6 = onSmall.plan({ networks: [network(NET_6, { mtu: 1279, subnets: [V6_SUBNET], endpoints: [{ id: EP1, addressIPv6: 'fd00:1::2/64', sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }], peers: [] })] }, state(kernel()));
  t.deepEqual(tooSmall6.errors.map((e) => [e.code, e.message]), [['KVNET_DATAPLANE_INVALID_DESIRED_STATE', 'network 666666666666: mtu 1279 is below 1280, the minimum for a network with an IPv6 subnet']]);
  t.deepEqual(lines(tooSmall6), []);
  const tooSmall4 = onSmall.plan({ networks: [network(NET_A, { mtu: 67 })] }, state(kernel()));
  t.regex(tooSmall4.errors[0]!.message, /mtu 67 is below 68, the IPv4 minimum/);
  t.is(onSmall.plan({ networks: [network(NET_A, { mtu: 68 })] }, state(kernel())).errors.length, 0, 'an IPv4-only network may go down to 68');

  const tooBig = onSmall.plan({ networks: [network(NET_A, { mtu: 1450 })] }, state(kernel()));
  t.deepEqual(tooBig.errors, []);
  t.true(lines(tooBig, 'create').every((l) => l.includes(' mtu 1450 ')), 'applied as asked: the MTU is the network\'s, the same on every host');
  t.deepEqual(tooBig.warnings.map((w) => [w.code, w.message]), [
    ['KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY', `network aaaaaaaaaaaa: MTU 1450 is above 1350, what the underlay carries (MTU 1400 − 50 bytes of VXLAN over IPv4); packets larger than 1350 bytes may be fragmented or dropped on the underlay`],
  ]);
});

test('checkNetworkMtu: the agent\'s check at creation names the limit and the underlay', (t) => {
  t.is(checkNetworkMtu(1350, { hasIpv6: true, underlayMtu: 1400 }), undefined);
  t.like(checkNetworkMtu(1351, { hasIpv6: false, underlayMtu: 1400, underlayIfname: 'eth0' }), { kind: 'too-large', limit: 1350, reason: 'is above 1350, what underlay eth0 carries (MTU 1400 − 50 bytes of VXLAN over IPv4)' });
  t.like(checkNetworkMtu(1331, { hasIpv6: false, underlayMtu: 1400, underlayFamily: 6 }), { kind: 'too-large', limit: 1330 });
  t.like(checkNetworkMtu(1279, { hasIpv6: true }), { kind: 'too-small', limit: 1280 });
  t.is(checkNetworkMtu(1279, { hasIpv6: false }), undefined);
  t.like(checkNetworkMtu(65536, { hasIpv6: false }), { kind: 'too-large', limit: 65535 });
  t.like(checkNetworkMtu('1400', { hasIpv6: false }), { kind: 'invalid' });
  t.like(checkNetworkMtu(1400.5, { hasIpv6: false }), { kind: 'invalid' });
});

test('IPv6 egress: an address on the gateway bridge\'s IPv6 subnet and an IPv6 default route; refused while the bridge has no IPv6', (t) => {
  const k = kernel();
  const egress = { path: '/run/netns/c1', ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16', addressIPv6: 'fd6b:766e:6777::2/64' } };
  const desired: DesiredState = { networks: [network(NET_A, { subnets: [{ cidr: '10.0.1.0/24', gateway: '10.0.1.1' }, V6_SUBNET], endpoints: [{ id: EP1, address: '10.0.1.2/24', addressIPv6: 'fd00:1::2/64', sandbox: egress }] })] };
  const without = dataplane().plan(desired, state(k));
  t.regex(without.errors[0]!.message, /sandbox\.egress\.addressIPv6 "fd6b:766e:6777::2\/64" cannot be attached: the gateway bridge docker_gwbridge has no IPv6 subnet/);
  t.false(lines(without).some((l) => l.includes('eth1')), 'no half egress');

  k.ns(HOST).links.get(GW)!.addresses.push('fd6b:766e:6777::1/64');
  const plan = dataplane().plan(desired, state(k));
  t.deepEqual(plan.errors, []);
  t.deepEqual(lines(plan, 'sandbox').slice(-5), [
    'link set dev eth1 up',
    'addr replace 172.18.0.2/16 dev eth1',
    'route replace default via 172.18.0.1 dev eth1',
    'addr replace fd6b:766e:6777::2/64 dev eth1 nodad',
    'route replace default via fd6b:766e:6777::1 dev eth1',
  ]);
  const wrong = dataplane().plan({ networks: [network(NET_A, { endpoints: [{ id: EP1, address: '10.0.1.2/24', sandbox: { ...egress, egress: { ...egress.egress, addressIPv6: 'fd6b:766e:6777::1/64' } } }] })] }, state(k));
  t.regex(wrong.errors[0]!.message, /addressIPv6 "fd6b:766e:6777::1\/64" is not a host address in the gateway bridge's IPv6 subnet fd6b:766e:6777::\/64 \(gateway fd6b:766e:6777::1\)/);
});

test('IPv6 input the kernel would refuse is refused up front, naming the field and the value', (t) => {
  const six = (extra: Partial<DesiredNetwork>): DesiredNetwork => network(NET_6, { subnets: [V6_SUBNET], endpoints: [], peers: [], ...extra });
  const cases: [string, DesiredNetwork, RegExp][] = [
    ['/127 subnet', six({ subnets: [{ cidr: 'fd00:1::/127', gateway: 'fd00:1::1' }] }), /subnet "fd00:1::\/127" is not an IPv4 CIDR of \/30 or larger or an IPv6 CIDR of \/126 or larger/],
    ['gateway of the other family', six({ subnets: [{ cidr: 'fd00:1::/64', gateway: '10.0.1.1' }] }), /gateway "10\.0\.1\.1" is not a host address of subnet fd00:1::\/64/],
    ['IPv6 in address', six({ endpoints: [{ id: EP1, address: 'fd00:1::2/64', sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }] }), /address "fd00:1::2\/64" is not an IPv4 address with a prefix length \(e\.g\. 10\.0\.1\.2\/24; an IPv6 address goes in addressIPv6\)/],
    ['outside', six({ endpoints: [{ id: EP1, addressIPv6: 'fd00:9::2/64', sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }] }), /addressIPv6 "fd00:9::2\/64" is in none of the network's subnets fd00:1::\/64/],
    ['anycast', six({ endpoints: [{ id: EP1, addressIPv6: 'fd00:1::/64', sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }] }), /addressIPv6 "fd00:1::\/64" is the gateway or the network \(Subnet-Router anycast\) address of its subnet/],
    ['no address', six({ endpoints: [{ id: EP1, sandbox: { path: '/run/netns/c1', ifname: 'eth0' } }] }), /address undefined is missing: an endpoint needs an IPv4 address \(address\), an IPv6 address \(addressIPv6\) or both/],
    ['peer ipv6', six({ peers: [{ ipv6: 'fd00:1::zz', mac: '06:00:00:00:00:01', vtep: '198.18.0.2' }] }), /peer fd00:1::zz of network 666666666666: ipv6 "fd00:1::zz" is not an IPv6 address/],
    ['peer without address', six({ peers: [{ mac: '06:00:00:00:00:01', vtep: '198.18.0.2' }] }), /ip undefined is missing: a peer needs an IPv4 address \(ip\), an IPv6 address \(ipv6\) or both/],
  ];
  for (const [what, bad, message] of cases) {
    const plan = dataplane().plan({ networks: [bad] }, state(kernel()));
    t.is(plan.errors.length, 1, what);
    t.regex(plan.errors[0]!.message, message, what);
  }
});
