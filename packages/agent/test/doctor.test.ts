/**
 * Pure parts of `kvnet doctor` and `kvnet node ls`: the kernel diff (desired state vs an actual state
 * built as data), the MTU findings, the choice of VXLAN probes and what their outcomes mean, and node
 * states. The same checks against real kernels and real agents are in doctor-cluster.test.ts.
 */

import test from 'ava';
import type { ActualLink, ActualNetwork, ActualState, DesiredState } from '@kvnet/dataplane';
import { buildClusterView, type ClusterView } from '../src/cluster-view.ts';
import { kernelDiff, type DiffNames } from '../src/doctor/kernel-diff.ts';
import { mtuFindings } from '../src/doctor/mtu.ts';
import { chooseProbeTargets, probeFindings, type ProbeOutcome } from '../src/doctor/vxlan-probe.ts';
import { nodeStates } from '../src/nodes.ts';
import { encodeRecord } from '../src/layout.ts';

const NID = 'a'.repeat(64);
const EID = 'b'.repeat(64);
const PREFIX = 'kv';
const NS = `${PREFIX}-${NID}`;

const desired: DesiredState = {
  networks: [{
    id: NID, vni: 4097, internal: false, subnets: [{ cidr: '10.0.1.0/24', gateway: '10.0.1.1' }],
    endpoints: [{ id: EID, address: '10.0.1.2/24', mac: '02:42:0a:00:01:02', sandbox: { path: '/run/netns/c1', ifname: 'eth0', egress: { ifname: 'eth1', address: '172.18.0.2/16' } } }],
    peers: [{ ip: '10.0.1.3', mac: '02:42:0a:00:01:03', vtep: '198.18.0.2' }, { ip: '10.0.1.4', mac: '02:42:0a:00:01:04', vtep: '198.18.0.3' }],
  }],
};

const link = (l: Partial<ActualLink> & { name: string }): ActualLink => ({ index: 1, mtu: 1450, mac: '02:00:00:00:00:01', up: true, addresses: [], ...l });

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function matching(): { networks: Mutable<ActualNetwork>[]; host: ActualState['host'] } {
  return {
    networks: [{
      id: NID, netns: NS,
      links: [
        link({ name: 'lo', mtu: 65536 }),
        link({ name: 'br0', kind: 'bridge', addresses: ['10.0.1.1/24'] }),
        link({ name: 'vxlan0', kind: 'vxlan', master: 'br0', vxlan: { vni: 4097, port: 4789, local: '198.18.0.1', learning: false, proxy: true } }),
        link({ name: `ve${EID.slice(0, 12)}`, kind: 'veth', master: 'br0', alias: `kvnet:ep:${EID}:d1` }),
      ],
      neighbours: [{ ip: '10.0.1.3', mac: '02:42:0a:00:01:03', permanent: true }, { ip: '10.0.1.4', mac: '02:42:0a:00:01:04', permanent: true }],
      fdb: [{ mac: '02:42:0a:00:01:03', dst: '198.18.0.2' }, { mac: '02:42:0a:00:01:04', dst: '198.18.0.3' }],
    }],
    host: {
      netns: '(own)',
      links: [link({ name: `${PREFIX}-g${EID.slice(0, 7)}`, kind: 'veth', master: 'gw0', alias: `kvnet:eg:${PREFIX}:${EID}:d2` })],
      gatewayBridge: { name: 'gw0', subnet: '172.18.0.0/16', gateway: '172.18.0.1', up: true, mtu: 1500, owned: true },
      iptables: {
        filter: ['-N KV-FORWARD', '-A KV-FORWARD -i gw0 -o gw0 -j DROP', '-A KV-FORWARD -i gw0 ! -o gw0 -j ACCEPT', '-A KV-FORWARD -o gw0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A FORWARD -j KV-FORWARD'],
        nat: ['-N KV-POSTROUTING', '-A KV-POSTROUTING -s 172.18.0.0/16 ! -o gw0 -j MASQUERADE', '-A POSTROUTING -j KV-POSTROUTING'],
      },
    },
  };
}

const names: DiffNames = {
  network: () => 'multi',
  endpoint: () => 'c1',
  peer: (_n, ip) => (ip === '10.0.1.3' ? 'c2 on h2' : 'c3 on h3'),
};

function diff(mutate: (a: ReturnType<typeof matching>) => void, sandbox: 'netns' | 'missing' = 'netns') {
  const a = matching();
  mutate(a);
  const actual: ActualState = { prefix: PREFIX, networks: a.networks, host: a.host };
  return kernelDiff({ desired, actual, prefix: PREFIX, vtep: '198.18.0.1', vxlanPort: 4789, gatewayBridge: 'gw0', sandboxes: new Map([['/run/netns/c1', sandbox]]), names });
}
const problems = (f: ReturnType<typeof diff>) => f.filter((x) => x.status === 'fail').map((x) => x.summary);

test('a kernel that matches gives no problem (the iptables rules are reported ok)', (t) => {
  const f = diff(() => undefined);
  t.deepEqual(problems(f), []);
  t.deepEqual(f.map((x) => x.area), ['iptables']);
});

test('every FDB and neighbour difference is named: missing, pointing elsewhere, left over, not permanent', (t) => {
  t.deepEqual(problems(diff((a) => { a.networks[0]!.fdb = a.networks[0]!.fdb.slice(1); })), [
    `network multi: FDB entry 02:42:0a:00:01:03 → 198.18.0.2 (c2 on h2) is missing from vxlan0 in ${NS}`,
  ]);
  t.deepEqual(problems(diff((a) => {
    const n = a.networks[0]!;
    n.fdb = [{ mac: '02:42:0a:00:01:03', dst: '198.18.0.9' }, n.fdb[1]!, { mac: '02:42:0a:00:01:99', dst: '198.18.0.4' }];
    n.neighbours = [{ ip: '10.0.1.3', mac: '02:42:0a:00:01:03', permanent: false }, { ip: '10.0.1.4', mac: '02:42:0a:00:01:05', permanent: true }];
  })), [
    'network multi: FDB entry 02:42:0a:00:01:03 (c2 on h2) points to 198.18.0.9 instead of 198.18.0.2',
    `network multi: FDB entry 02:42:0a:00:01:99 → 198.18.0.4 on vxlan0 in ${NS} is left over (no such remote endpoint)`,
    'network multi: neighbour entry 10.0.1.3 → 02:42:0a:00:01:03 (c2 on h2) is not permanent',
    'network multi: neighbour entry 10.0.1.4 (c3 on h3) has MAC 02:42:0a:00:01:05 instead of 02:42:0a:00:01:04',
  ]);
});

test('links, namespaces, sandboxes, egress, gateway bridge and iptables differences are named', (t) => {
  t.deepEqual(problems(diff((a) => { a.networks = []; })), [`network multi: overlay namespace ${NS} is missing (it has 1 local endpoint(s))`]);
  t.deepEqual(problems(diff((a) => { a.networks.push({ id: 'c'.repeat(64), netns: `${PREFIX}-${'c'.repeat(64)}`, links: [], neighbours: [], fdb: [] }); })), [
    `overlay namespace ${PREFIX}-${'c'.repeat(64)} (network multi) is left over: no local endpoint needs it`,
  ]);
  t.deepEqual(problems(diff((a) => {
    const n = a.networks[0]!;
    n.links = n.links.filter((l) => l.name !== 'vxlan0').map((l) => (l.name === 'br0' ? { ...l, up: false, addresses: [] } : l.kind === 'veth' ? { ...l, alias: undefined } : l));
  })), [
    `network multi: br0 is down in ${NS}`,
    `network multi: gateway address 10.0.1.1/24 is missing from br0 in ${NS}`,
    `network multi: vxlan0 (VNI 4097) is missing in ${NS}`,
    `network multi: endpoint c1's interface ve${EID.slice(0, 12)} in ${NS} is unfinished (no completion marker)`,
  ]);
  t.deepEqual(problems(diff((a) => {
    const vx = a.networks[0]!.links.find((l) => l.name === 'vxlan0')!;
    a.networks[0]!.links = a.networks[0]!.links.map((l) => (l === vx ? { ...vx, vxlan: { vni: 4098, port: 8472, local: '198.18.0.1', learning: true, proxy: true } } : l));
  })), [`network multi: vxlan0 in ${NS} has VNI 4098 instead of 4097, UDP port 8472 instead of 4789, learning on`]);
  const gone = diff(() => undefined, 'missing').filter((x) => x.status === 'fail');
  t.deepEqual(gone.map((x) => [x.area, x.summary, x.fix]), [['sandbox', "network multi: endpoint c1's sandbox /run/netns/c1 is gone", 'if the container is gone, disconnect the endpoint: kvnet network disconnect multi c1']]);
  t.deepEqual(problems(diff((a) => { a.host = { ...a.host, links: [] }; })), [`endpoint c1 of network multi: egress interface ${PREFIX}-g${EID.slice(0, 7)} is missing on the host`]);
  t.deepEqual(problems(diff((a) => { a.host = { ...a.host, gatewayBridge: undefined }; })), ['gateway bridge gw0 is missing (1 endpoint(s) need it for their way out)']);
  t.deepEqual(problems(diff((a) => { a.host = { ...a.host, iptables: { filter: a.host.iptables!.filter.filter((r) => !r.includes('DROP')), nat: [] } }; })), [
    'iptables rule missing (table filter): -A KV-FORWARD -i gw0 -o gw0 -j DROP',
    'iptables rule missing (table nat): -A KV-POSTROUTING -s 172.18.0.0/16 ! -o gw0 -j MASQUERADE',
    'iptables rule missing (table nat): -A POSTROUTING -j KV-POSTROUTING',
  ]);
});

test('MTU: interfaces off the network MTU, and an underlay too small for overlay + 50; a network MTU wins over the default', (t) => {
  const a = matching();
  const actual: ActualState = { prefix: PREFIX, networks: a.networks, host: a.host };
  const run = (underlayMtu: number, d: DesiredState = desired) =>
    mtuFindings({ underlay: { ifname: 'eth0', mtu: underlayMtu }, vtep: '198.18.0.1', desired: d, actual, prefix: PREFIX, defaultMtu: 1450, names }).map((f) => `${f.status} ${f.summary}`);
  t.deepEqual(run(1500), ['ok underlay eth0 MTU 1500; 1 overlay network(s) within it (≤ 1450)']);
  t.deepEqual(run(1400), ["fail network multi: overlay MTU 1450 + 50 bytes of VXLAN exceeds underlay eth0's MTU 1400: packets over 1350 bytes are dropped"]);
  const small: DesiredState = { networks: [{ ...desired.networks[0]!, mtu: 1300 }] };
  t.deepEqual(run(1400, small), [`fail network multi: overlay MTU should be 1300, but in ${NS}: vxlan0 1450, br0 1450, ve${EID.slice(0, 12)} 1450`]);
});

function view(): ClusterView {
  const e = (eid: string, name: string, node: string, ip: string, netns?: string) => ({
    key: `endpoints/${NID}/${eid}`,
    value: encodeRecord({ id: eid, name, network: NID, node, nodeId: 'x', address: `${ip}/24`, ip, mac: `02:42:${ip}`, vtep: `198.18.0.${node.slice(1)}`, createdAt: 't', ...(netns ? { netns } : {}) }),
    revision: '1',
  });
  return buildClusterView({
    networks: [{ key: `networks/${NID}`, value: encodeRecord({ id: NID, name: 'multi', vni: 4097, poolId: 'p', subnet: '10.0.1.0/24', gateway: '10.0.1.1', internal: false, createdAt: 't', createdBy: 'h1' }), revision: '1' }],
    endpoints: [e('1'.repeat(64), 'c1', 'h1', '10.0.1.2', '/run/netns/c1'), e('2'.repeat(64), 'c2', 'h2', '10.0.1.3', '/run/netns/c2'), e('3'.repeat(64), 'c3', 'h2', '10.0.1.4'), e('4'.repeat(64), 'c4', 'h3', '10.0.1.5')],
    nodes: [1, 2].map((i) => ({ key: `nodes/h${i}`, value: encodeRecord({ name: `h${i}`, advertise: `198.18.0.${i}`, advertiseAddr: `198.18.0.${i}`, version: '0.1.0', startedAt: 't', nodeId: `n${i}` }), revision: '1' })),
  });
}

test('probes: from a local sandbox to up to two endpoints of each other node; what the outcomes mean', (t) => {
  const { targets, skipped } = chooseProbeTargets(view(), 'h1', () => true);
  t.deepEqual(skipped, []);
  t.deepEqual(targets.map((x) => [x.node, x.vtep, x.from.endpoint, x.to.map((y) => y.endpoint)]), [
    ['h2', '198.18.0.2', 'c1', ['c2', 'c3']],
    ['h3', '198.18.0.3', 'c1', ['c4']],
  ]);
  t.deepEqual(chooseProbeTargets(view(), 'h1', () => false), { targets: [], skipped: ['multi'] });
  const outcomes: ProbeOutcome[] = [
    { target: targets[0]!, answered: 'c3', fullSize: false },
    { target: targets[1]!, underlay: true },
  ];
  const r = probeFindings(outcomes, [], 'now', 4789);
  t.deepEqual(r.findings.map((f) => `${f.area} ${f.status} ${f.node}`), ['vxlan ok h2', 'mtu fail h2', 'vxlan fail h3']);
  t.regex(r.findings[2]!.summary, /^node h3 \(VTEP 198\.18\.0\.3\) does not answer over VXLAN: c1 → c4 \(10\.0\.1\.5\) on network multi; its VTEP answers on the underlay, so UDP 4789 to it \(or back\) is blocked/);
  t.regex(r.findings[2]!.fix!, /allow UDP 4789/);
  t.deepEqual([...r.nodes.entries()].map(([n, p]) => [n, p.ok]), [['h2', true], ['h3', false]]);
});

test('node states: alive, unreachable (last probe failed), restarting (announced), down (endpoints left)', (t) => {
  const v = view();
  const states = nodeStates({
    view: v,
    self: 'h1',
    restarting: new Map([['h3', 2_000], ['h9', 500]]),
    probes: new Map([['h2', { ok: false, at: 't', detail: 'no answer' }]]),
    now: 1_000,
  });
  t.deepEqual(states.map((n) => [n.name, n.state, n.endpoints, n.self, n.advertise]), [
    ['h1', 'alive', 1, true, '198.18.0.1'],
    ['h2', 'unreachable', 2, false, '198.18.0.2'],
    ['h3', 'restarting', 1, false, '198.18.0.3'],
  ]);
  t.is(states[2]!.until, new Date(2_000).toISOString());
  const later = nodeStates({ view: v, self: 'h1', restarting: new Map([['h3', 2_000]]), probes: new Map(), now: 3_000 });
  t.deepEqual(later.map((n) => n.state), ['alive', 'alive', 'down']);
});
