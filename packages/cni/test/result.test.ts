import test from 'ava';
import type { CniAttachmentView } from '@kvnet/agent';
import { buildResult, checkAttachment, convertResult } from '../src/result.ts';

const NETNS = '/run/netns/c1';
const attachment = (over: Partial<CniAttachmentView> = {}): CniAttachmentView => ({
  endpoint: { id: 'e'.repeat(64), name: 'web1', network: 'n'.repeat(64), node: 'h1', address: '10.0.1.2/24', ip: '10.0.1.2', mac: '02:42:0a:00:01:02', netns: NETNS, ifname: 'eth0', cni: { containerId: 'c1', ifname: 'eth0', netconf: 'multi' } },
  network: { id: 'n'.repeat(64), name: 'multi', subnet: '10.0.1.0/24', gateway: '10.0.1.1', internal: false },
  egress: { ifname: 'eth1', address: '172.18.0.2/16', gateway: '172.18.0.1' },
  sandbox: {
    interfaces: [
      { name: 'lo', mac: '00:00:00:00:00:00', mtu: 65536, up: true, addresses: ['127.0.0.1/8'] },
      { name: 'eth0', mac: '02:42:0a:00:01:02', mtu: 1450, up: true, addresses: ['10.0.1.2/24'] },
      { name: 'eth1', mac: '0a:bb:cc:dd:ee:01', mtu: 1500, up: true, addresses: ['172.18.0.2/16'] },
    ],
    routes: [{ dst: '0.0.0.0/0', gateway: '172.18.0.1', dev: 'eth1' }, { dst: '10.0.1.0/24', dev: 'eth0' }],
  },
  ...over,
});

test('1.0.0: both container interfaces with MAC and sandbox, addresses by index with gateways, the default route via the bridge', (t) => {
  t.deepEqual(buildResult(attachment(), { cniVersion: '1.0.0', ifname: 'eth0' }), {
    cniVersion: '1.0.0',
    interfaces: [
      { name: 'eth0', mac: '02:42:0a:00:01:02', sandbox: NETNS },
      { name: 'eth1', mac: '0a:bb:cc:dd:ee:01', sandbox: NETNS },
    ],
    ips: [
      { address: '10.0.1.2/24', gateway: '10.0.1.1', interface: 0 },
      { address: '172.18.0.2/16', gateway: '172.18.0.1', interface: 1 },
    ],
    routes: [{ dst: '0.0.0.0/0', gw: '172.18.0.1' }],
  });
});

test('1.1.0 adds MTUs; 0.4.0 and 0.3.1 add the address family; dns from the configuration is passed through', (t) => {
  const r11 = buildResult(attachment(), { cniVersion: '1.1.0', ifname: 'eth0', dns: { nameservers: ['10.0.1.1'] } });
  t.deepEqual(r11.interfaces!.map((i) => i.mtu), [1450, 1500]);
  t.deepEqual(r11.dns, { nameservers: ['10.0.1.1'] });
  const r04 = buildResult(attachment(), { cniVersion: '0.4.0', ifname: 'eth0' });
  t.deepEqual(r04.ips!.map((ip) => ip.version), ['4', '4']);
  t.false('mtu' in r04.interfaces![0]!);
  t.false('dns' in r04);
  t.is(buildResult(attachment(), { cniVersion: '0.3.1', ifname: 'eth0' }).cniVersion, '0.3.1');
});

test("dns: the configuration's own wins; without it the agent's resolver; an earlier plugin's only when neither gives one", (t) => {
  const kvnet = attachment({ dns: { nameservers: ['169.254.53.53'] } });
  t.deepEqual(buildResult(kvnet, { cniVersion: '1.0.0', ifname: 'eth0' }).dns, { nameservers: ['169.254.53.53'] });
  t.deepEqual(buildResult(kvnet, { cniVersion: '1.0.0', ifname: 'eth0', dns: { nameservers: ['10.0.1.1'], search: ['corp'] } }).dns, { nameservers: ['10.0.1.1'], search: ['corp'] });
  const prevResult = { cniVersion: '1.0.0', dns: { nameservers: ['192.0.2.53'] } } as const;
  t.deepEqual(buildResult(kvnet, { cniVersion: '1.0.0', ifname: 'eth0', prevResult }).dns, { nameservers: ['169.254.53.53'] });
  t.deepEqual(buildResult(attachment(), { cniVersion: '1.0.0', ifname: 'eth0', prevResult }).dns, { nameservers: ['192.0.2.53'] });
});

test('an internal network: one interface, one address, no route out', (t) => {
  const { egress: _drop, ...internal } = attachment({ network: { id: 'n'.repeat(64), name: 'multi', subnet: '10.0.1.0/24', gateway: '10.0.1.1', internal: true } });
  const r = buildResult(internal, { cniVersion: '1.0.0', ifname: 'eth0' });
  t.deepEqual(r.interfaces!.map((i) => i.name), ['eth0']);
  t.deepEqual(r.ips, [{ address: '10.0.1.2/24', gateway: '10.0.1.1', interface: 0 }]);
  t.deepEqual(r.routes, []);
});

test('after another interface plugin: its result is kept and kvnet appends, shifting its indexes', (t) => {
  const prev = { cniVersion: '0.4.0', interfaces: [{ name: 'net9', sandbox: NETNS, mac: '0a:00:00:00:00:09' }], ips: [{ version: '4', address: '192.168.9.2/24', interface: 0 }], routes: [{ dst: '192.168.0.0/16' }] };
  const r = buildResult(attachment(), { cniVersion: '1.0.0', ifname: 'eth0', prevResult: convertResult(prev, '1.0.0') });
  t.deepEqual(r.interfaces!.map((i) => i.name), ['net9', 'eth0', 'eth1']);
  t.deepEqual(r.ips!.map((ip) => [ip.address, ip.interface, ip.version]), [['192.168.9.2/24', 0, undefined], ['10.0.1.2/24', 1, undefined], ['172.18.0.2/16', 2, undefined]]);
  t.deepEqual(r.routes, [{ dst: '192.168.0.0/16' }, { dst: '0.0.0.0/0', gw: '172.18.0.1' }]);
});

test('CHECK passes when the container holds what was recorded, whatever a later plugin added', (t) => {
  const prev = buildResult(attachment(), { cniVersion: '1.0.0', ifname: 'eth0' });
  const withExtra = { ...prev, interfaces: [...prev.interfaces!, { name: 'ifb0' }], routes: [...prev.routes!, { dst: '10.9.0.0/16' }] };
  t.deepEqual(checkAttachment(attachment(), withExtra, { netns: NETNS, ifname: 'eth0' }), []);
});

test('CHECK names each difference: missing interface, wrong address or MAC, down, no default route, netns gone', (t) => {
  const prev = buildResult(attachment(), { cniVersion: '1.0.0', ifname: 'eth0' });
  const base = attachment();
  const without = (name: string): CniAttachmentView => ({ ...base, sandbox: { ...base.sandbox!, interfaces: base.sandbox!.interfaces.filter((i) => i.name !== name) } });
  t.deepEqual(checkAttachment(without('eth0'), prev, { netns: NETNS, ifname: 'eth0' }), [`interface eth0 is missing in netns ${NETNS}`]);
  t.deepEqual(checkAttachment(without('eth1'), prev, { netns: NETNS, ifname: 'eth0' }), [`gateway bridge interface eth1 is missing in netns ${NETNS}`]);
  const changed: CniAttachmentView = {
    ...base,
    sandbox: {
      interfaces: base.sandbox!.interfaces.map((i) => (i.name === 'eth0' ? { ...i, up: false, mac: '02:00:00:00:00:99', addresses: ['10.0.1.9/24'] } : i)),
      routes: [],
    },
  };
  t.deepEqual(checkAttachment(changed, prev, { netns: NETNS, ifname: 'eth0' }), [
    `interface eth0 in netns ${NETNS} is down`,
    `interface eth0 in netns ${NETNS} has MAC 02:00:00:00:00:99, not 02:42:0a:00:01:02`,
    `interface eth0 in netns ${NETNS} has 10.0.1.9/24, not 10.0.1.2/24`,
    `netns ${NETNS} has no default route via 172.18.0.1`,
  ]);
  const { sandbox: _gone, ...noSandbox } = base;
  t.deepEqual(checkAttachment(noSandbox, prev, { netns: NETNS, ifname: 'eth0' }), [`network namespace ${NETNS} is gone`]);
  const otherAddress = buildResult({ ...base, endpoint: { ...base.endpoint, address: '10.0.1.3/24' } }, { cniVersion: '1.0.0', ifname: 'eth0' });
  t.deepEqual(checkAttachment(base, otherAddress, { netns: NETNS, ifname: 'eth0' }), ['prevResult gives eth0 10.0.1.3/24, but the agent records 10.0.1.2/24']);
  t.deepEqual(checkAttachment(base, prev, { netns: '/run/netns/other', ifname: 'eth0' }).slice(0, 1), [`the attachment is recorded for netns ${NETNS}, not CNI_NETNS /run/netns/other`]);
});
