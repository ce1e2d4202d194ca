/** Pure pieces: iproute2/iptables output parsers (fed with output captured on iproute2 6.1), subnet choice, names. */

import test from 'ava';
import { chooseGatewaySubnet, parseRouteDestinations } from '../src/gateway-bridge.ts';
import { desiredIptablesRules, iptablesRemovalInput, iptablesRestoreInput, parseIptablesSave } from '../src/iptables.ts';
import { parseBatchErrors, parseJsonLines } from '../src/iproute2.ts';
import { gatewayBridgeOf, parseFdb, parseLinks, parseNeighbours } from '../src/kernel-state.ts';
import { egressHostIfname, networkIdOfNetns, parseMarker, endpointMarker } from '../src/names.ts';

test('batch stderr: each "Command failed -:N" gets the message printed before it', (t) => {
  const stderr = [
    'Error: A VXLAN device with the specified VNI already exists.',
    'Command failed -:1',
    'Cannot find device "nonexist"',
    'Command failed -:3',
    'RTNETLINK answers: No such file or directory',
    'Command failed -:12',
  ].join('\n');
  t.deepEqual(
    [...parseBatchErrors(stderr)],
    [
      [1, 'A VXLAN device with the specified VNI already exists.'],
      [3, 'Cannot find device "nonexist"'],
      [12, 'No such file or directory'],
    ],
  );
  t.is(parseBatchErrors('').size, 0);
});

test('-json -batch output is one JSON array per command, one per line', (t) => {
  t.deepEqual(parseJsonLines('[{"a":"x]\\n["}]\n[]\n[{"b":[1,2]}]\n'), [[{ a: 'x]\n[' }], [], [{ b: [1, 2] }]]);
  t.deepEqual(parseJsonLines(''), []);
});

const VXLAN_JSON = [
  {
    ifindex: 2,
    link_index: 2,
    ifname: 'vxlan0',
    flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
    mtu: 1450,
    master: 'br0',
    address: '92:71:59:a6:21:c1',
    link_netnsid: 0,
    linkinfo: {
      info_kind: 'vxlan',
      info_data: { id: 300, local: '198.18.0.1', port_range: { low: 0, high: 0 }, port: 4789, learning: false, proxy: true, ttl: 0, ageing: 300 },
      info_slave_kind: 'bridge',
      info_slave_data: { state: 'forwarding', isolated: false },
    },
    addr_info: [{ family: 'inet6', local: 'fe80::9031:75ff:fe3f:db6f', prefixlen: 64, scope: 'link' }],
  },
  {
    ifindex: 4,
    link_index: 3,
    ifname: 'kvx1-g1111111',
    flags: ['NO-CARRIER', 'BROADCAST', 'MULTICAST', 'UP'],
    mtu: 1500,
    master: 'docker_gwbridge',
    address: '5e:23:cd:3e:f2:b8',
    link_netnsid: 1,
    ifalias: 'kvnet:eg:kvx1:1111:abcdef012345',
    linkinfo: { info_kind: 'veth', info_slave_kind: 'bridge', info_slave_data: { isolated: true } },
    addr_info: [],
  },
  { ifindex: 5, ifname: 'br0', flags: ['BROADCAST'], mtu: 1450, address: 'aa:bb:cc:00:00:01', linkinfo: { info_kind: 'bridge' }, addr_info: [{ family: 'inet', local: '10.0.1.1', prefixlen: 24 }, { family: 'inet', local: '10.0.2.1', prefixlen: 24 }] },
];

test('links: kind, flags, master, alias, IPv4 addresses, VXLAN attributes, port isolation, veth peer', (t) => {
  const [vx, eg, br] = parseLinks(VXLAN_JSON);
  t.deepEqual(vx, {
    name: 'vxlan0',
    index: 2,
    kind: 'vxlan',
    mtu: 1450,
    mac: '92:71:59:a6:21:c1',
    up: true,
    master: 'br0',
    addresses: [],
    vxlan: { vni: 300, port: 4789, local: '198.18.0.1', learning: false, proxy: true },
    isolated: false,
  });
  t.deepEqual(eg?.peer, { index: 3, netnsId: 1 });
  t.is(eg?.alias, 'kvnet:eg:kvx1:1111:abcdef012345');
  t.true(eg?.isolated);
  t.false(br!.up);
  t.deepEqual(br!.addresses, ['10.0.1.1/24', '10.0.2.1/24']);
});

test('neighbours and FDB: only vxlan0, only self entries with a remote', (t) => {
  const neigh = [
    { dst: '10.0.1.3', dev: 'vxlan0', lladdr: '02:42:0a:00:01:03', state: ['PERMANENT'] },
    { dst: '10.0.1.9', dev: 'vxlan0', lladdr: '02:42:0a:00:01:09', state: ['STALE'] },
    { dst: 'fe80::1', dev: 'vxlan0', lladdr: '02:42:0a:00:01:03', state: ['STALE'] },
    { dst: '10.0.1.2', dev: 'br0', lladdr: '02:42:0a:00:01:02', state: ['REACHABLE'] },
  ];
  t.deepEqual(parseNeighbours(neigh, 'vxlan0'), [
    { ip: '10.0.1.3', mac: '02:42:0a:00:01:03', permanent: true },
    { ip: '10.0.1.9', mac: '02:42:0a:00:01:09', permanent: false },
  ]);
  const fdb = [
    { mac: '02:42:0a:00:01:03', ifname: 'vxlan0', flags: [], master: 'br0', state: '' },
    { mac: '92:71:59:a6:21:c1', ifname: 'vxlan0', flags: [], master: 'br0', state: 'permanent' },
    { mac: '02:42:0a:00:01:03', ifname: 'vxlan0', dst: '198.18.0.2', linkNetNsId: 0, flags: ['self'], state: 'permanent' },
    { mac: '33:33:00:00:00:01', ifname: 'br0', flags: ['self'], state: 'permanent' },
  ];
  t.deepEqual(parseFdb(fdb, 'vxlan0'), [{ mac: '02:42:0a:00:01:03', dst: '198.18.0.2' }]);
});

// Captured on iproute2 6.1 / kernel 6.18: br0 with a dual-stack gateway, vxlan0 with an IPv6 VTEP.
const IPV6_JSON = [
  {
    ifindex: 3,
    ifname: 'vxlan0',
    flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
    mtu: 1330,
    master: 'br0',
    address: '2e:25:46:39:9e:05',
    linkinfo: {
      info_kind: 'vxlan',
      info_data: { id: 4097, local6: '2001:2::1', port_range: { low: 0, high: 0 }, port: 4790, learning: false, proxy: true, ttl: 0, df: 'unset', ageing: 300 },
      info_slave_kind: 'bridge',
      info_slave_data: { state: 'forwarding', isolated: false },
    },
    addr_info: [{ family: 'inet6', local: 'fe80::2c25:46ff:fe39:9e05', prefixlen: 64, scope: 'link' }],
  },
  {
    ifindex: 4,
    ifname: 'br0',
    flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
    mtu: 1330,
    address: 'f2:c4:87:5d:71:6b',
    linkinfo: { info_kind: 'bridge' },
    addr_info: [
      { family: 'inet', local: '10.0.1.1', prefixlen: 24, scope: 'global' },
      { family: 'inet6', local: 'fd00:1:0:0::1', prefixlen: 64, scope: 'global', nodad: true },
      { family: 'inet6', local: 'fe80::f0c4:87ff:fe5d:716b', prefixlen: 64, scope: 'link' },
    ],
  },
];

test('IPv6: global addresses are read canonical and link-local ones left out; an IPv6 VTEP is read from local6', (t) => {
  const [vx, br] = parseLinks(IPV6_JSON);
  t.deepEqual(vx!.addresses, []);
  t.deepEqual(vx!.vxlan, { vni: 4097, port: 4790, local: '2001:2::1', learning: false, proxy: true });
  t.deepEqual(br!.addresses, ['10.0.1.1/24', 'fd00:1::1/64']);
  t.like(gatewayBridgeOf(parseLinks([{ ...IPV6_JSON[1]!, ifname: 'docker_gwbridge' }]), 'docker_gwbridge', 'kv'), {
    subnet: '10.0.1.0/24',
    gateway: '10.0.1.1',
    subnet6: 'fd00:1::/64',
    gateway6: 'fd00:1::1',
  });
  const neigh = [
    { dst: 'fd00:1::3', dev: 'vxlan0', lladdr: '02:42:0a:00:01:03', state: ['PERMANENT'] },
    { dst: 'FD00:1:0::4', dev: 'vxlan0', lladdr: '06:11:22:33:44:55', state: ['PERMANENT'] },
    { dst: 'fe80::1', dev: 'vxlan0', lladdr: '02:42:0a:00:01:03', state: ['STALE'] },
  ];
  t.deepEqual(parseNeighbours(neigh, 'vxlan0'), [
    { ip: 'fd00:1::3', mac: '02:42:0a:00:01:03', permanent: true },
    { ip: 'fd00:1::4', mac: '06:11:22:33:44:55', permanent: true },
  ]);
  t.deepEqual(parseFdb([{ mac: '02:42:0a:00:01:03', ifname: 'vxlan0', dst: '2001:2::2', flags: ['self'], state: 'permanent' }], 'vxlan0'), [{ mac: '02:42:0a:00:01:03', dst: '2001:2::2' }]);
});

test('gateway subnet: the first /16 from 172.18 upward that overlaps no host route', (t) => {
  t.deepEqual(chooseGatewaySubnet('172.18.0.0/16', ['198.18.0.0/15', '198.18.0.1']), { subnet: '172.18.0.0/16', gateway: '172.18.0.1', tried: 1 });
  t.deepEqual(chooseGatewaySubnet('172.18.0.0/16', ['172.18.0.0/16', '172.19.4.0/24']), { subnet: '172.20.0.0/16', gateway: '172.20.0.1', tried: 3 });
  t.deepEqual(chooseGatewaySubnet('172.18.0.0/16', ['172.16.0.0/12']), { tried: 14 }, '172.18 … 172.31, then stop');
  t.deepEqual(chooseGatewaySubnet('10.200.0.0/24', ['10.200.0.7']), { subnet: '10.200.1.0/24', gateway: '10.200.1.1', tried: 2 });
  t.deepEqual(chooseGatewaySubnet('100.64.0.0/16', ['100.64.0.0/10']), { tried: 1 }, 'outside RFC 1918 only the pool itself is tried');
  const routes = [{ dst: 'default', gateway: '198.18.0.254' }, { dst: '172.18.0.0/16', dev: 'x' }, { type: 'local', dst: '127.0.0.1' }, { dst: 'fe80::/64' }];
  t.deepEqual(parseRouteDestinations(routes), ['172.18.0.0/16', '127.0.0.1', 'fe80::/64'], 'both families; the chooser keeps its own');
});

test('gateway IPv6 subnet: the first /64 from the pool to the end of its /48 that overlaps no IPv6 route', (t) => {
  const pool = 'fd6b:766e:6777::/64';
  t.deepEqual(chooseGatewaySubnet(pool, ['fe80::/64', '2001:2::/64', '10.0.0.0/8', 'fd6b:766e:6777::/64']), { subnet: 'fd6b:766e:6777:1::/64', gateway: 'fd6b:766e:6777:1::1', tried: 2 });
  t.deepEqual(chooseGatewaySubnet(pool, ['fd6b:766e:6777:0:1::5']), { subnet: 'fd6b:766e:6777:1::/64', gateway: 'fd6b:766e:6777:1::1', tried: 2 }, 'a host address inside the candidate');
  t.deepEqual(chooseGatewaySubnet(pool, ['fd6b:766e:6777::/56']), { subnet: 'fd6b:766e:6777:100::/64', gateway: 'fd6b:766e:6777:100::1', tried: 257 }, 'a wider route is skipped at once');
  t.deepEqual(chooseGatewaySubnet(pool, ['fd00::/8']), { tried: 65_536 }, 'the whole /48 is covered: give up');
});

const SAVE = `# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:KV1-FORWARD - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j KV1-FORWARD
-A KV1-FORWARD -i docker_gwbridge -o docker_gwbridge -j DROP
-A DOCKER-USER -j RETURN
COMMIT
`;

test('iptables: our chains are read from iptables-save and rewritten only when they differ', (t) => {
  const have = parseIptablesSave(SAVE, ['KV1-FORWARD']);
  t.deepEqual(have, ['-N KV1-FORWARD', '-A KV1-FORWARD -i docker_gwbridge -o docker_gwbridge -j DROP', '-A FORWARD -j KV1-FORWARD']);
  const want = desiredIptablesRules('kv1', 'docker_gwbridge', '172.18.0.0/16');
  t.is(iptablesRestoreInput('filter', want.filter, want.filter), undefined);
  t.is(
    iptablesRestoreInput('filter', want.filter, have),
    [
      '*filter',
      ':KV1-FORWARD - [0:0]',
      '-A KV1-FORWARD -i docker_gwbridge -o docker_gwbridge -j DROP',
      '-A KV1-FORWARD -i docker_gwbridge ! -o docker_gwbridge -j ACCEPT',
      '-A KV1-FORWARD -o docker_gwbridge -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
      'COMMIT',
      '',
    ].join('\n'),
    'the jump exists: not added again',
  );
  t.regex(iptablesRestoreInput('nat', want.nat, [])!, /-A KV1-POSTROUTING -s 172\.18\.0\.0\/16 ! -o docker_gwbridge -j MASQUERADE\n-I POSTROUTING 1 -j KV1-POSTROUTING\n/);
  t.regex(iptablesRestoreInput('filter', want.filter, [...want.filter, '-A FORWARD -j KV1-FORWARD'])!, /-D FORWARD -j KV1-FORWARD\n/);
  t.is(iptablesRemovalInput('filter', have, ['KV1-FORWARD']), '*filter\n-D FORWARD -j KV1-FORWARD\n-F KV1-FORWARD\n-X KV1-FORWARD\nCOMMIT\n');
  t.is(iptablesRemovalInput('filter', [], ['KV1-FORWARD']), undefined);
});

test('names: prefixes never match each other, markers round-trip (address parsing is tested in @kvnet/netaddr)', (t) => {
  t.is(networkIdOfNetns('ab', 'ab-0123abcd'), '0123abcd');
  t.is(networkIdOfNetns('ab', 'abe-0123abcd'), undefined);
  t.is(networkIdOfNetns('ab', 'ab-Not_An_Id'), undefined);
  t.true(egressHostIfname('abcdef', 'f'.repeat(64)).length <= 15);
  t.deepEqual(parseMarker(endpointMarker('e1', 'd1')), { type: 'ep', endpointId: 'e1', digest: 'd1' });
  t.is(parseMarker('something else'), undefined);
});
