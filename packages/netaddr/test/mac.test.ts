import test from 'ava';
import { endpointMac, macFromIp, macFromIpv4, normalizeMac, parseIp } from '../src/index.ts';

test('an IPv4 address gives 02:42 and its four bytes (Docker overlay convention)', (t) => {
  t.is(macFromIp(parseIp('10.66.0.2')!), '02:42:0a:42:00:02');
  t.is(macFromIpv4(0x0a420002), '02:42:0a:42:00:02');
});

test('an IPv6 address gives 06 and five hash bytes: stable, distinct across subnets, never an IPv4-derived MAC', (t) => {
  const a = macFromIp(parseIp('fd00:1::5')!);
  t.regex(a, /^06(:[0-9a-f]{2}){5}$/);
  t.is(macFromIp(parseIp('FD00:1:0::5')!), a, 'the same address in another spelling gives the same MAC');
  t.not(macFromIp(parseIp('fd00:2::5')!), a, 'same low bytes in another subnet of the network');
  const many = new Set<string>();
  for (let i = 0; i < 20_000; i++) many.add(macFromIp({ family: 6, value: (0xfd00n << 112n) | BigInt(i) }));
  t.is(many.size, 20_000, 'no collision among 20 000 serial addresses of one /64');
  t.is(normalizeMac(a), a, 'unicast and well-formed');
});

test('an endpoint keeps the IPv4-derived MAC in dual stack and uses the IPv6 rule only when IPv6-only', (t) => {
  const v4 = parseIp('10.0.1.2')!;
  const v6 = parseIp('fd00:1::2')!;
  t.is(endpointMac({ ipv4: v4, ipv6: v6 }), '02:42:0a:00:01:02');
  t.is(endpointMac({ ipv6: v6 }), macFromIp(v6));
  t.is(endpointMac({}), undefined);
});

test('MACs are normalised to lowercase; multicast and all-zero MACs are refused', (t) => {
  t.is(normalizeMac('02:AA:BB:CC:DD:EE'), '02:aa:bb:cc:dd:ee');
  t.is(normalizeMac('01:00:5e:00:00:01'), undefined);
  t.is(normalizeMac('00:00:00:00:00:00'), undefined);
  t.is(normalizeMac('02:aa:bb:cc:dd'), undefined);
});
