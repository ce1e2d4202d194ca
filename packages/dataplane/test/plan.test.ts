/**
 * The planner as pure data: desired + actual → lines. The fake kernel (fixtures/fake-kernel.ts) plays
 * the plans so "apply, then plan again" can be checked without root; the kernel tests prove the lines
 * on a real kernel.
 */

import test from 'ava';
import { Dataplane, type DataplaneConfig, type DesiredEndpoint, type DesiredNetwork, type DesiredState, type Plan } from '../src/index.ts';
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
  t.throws(() => dataplane({ vtep: '300.1.1.1' }), { message: /vtep="300.1.1.1": is not an IPv4 address/ });
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
