import test from 'ava';
import {
  cidrOf,
  formatCidr,
  formatInterfaceAddress,
  isHostAddress,
  isStructurallyReserved,
  lowestFreeAddress,
  nextCidr,
  parseInterfaceAddress,
  parseIp,
} from '../src/index.ts';

test('an interface address keeps its host bits and knows its network, for both families', (t) => {
  const a = parseInterfaceAddress('10.0.1.2/24')!;
  t.is(formatInterfaceAddress(a), '10.0.1.2/24');
  t.is(formatCidr(a.network), '10.0.1.0/24');
  const b = parseInterfaceAddress('FD00:1::0002/64')!;
  t.is(formatInterfaceAddress(b), 'fd00:1::2/64');
  t.is(formatCidr(b.network), 'fd00:1::/64');
  for (const bad of ['10.0.1.2', '10.0.1.2/33', 'fd00::1/129', 'fd00::1/64/1', '10.0.1.2/08', '', 'x/24']) {
    t.is(parseInterfaceAddress(bad), undefined, bad);
  }
});

test('the next block of the same size, and the end of each address space', (t) => {
  t.is(formatCidr(nextCidr(cidrOf('172.18.0.0/16')!)!), '172.19.0.0/16');
  t.is(formatCidr(nextCidr(cidrOf('fd00:0:0:ffff::/64')!)!), 'fd00:0:1::/64');
  t.is(nextCidr(cidrOf('255.255.255.0/24')!), undefined);
  t.is(nextCidr(cidrOf('ffff:ffff:ffff:ffff::/64')!), undefined);
});

test('host addresses: not the network address, not the IPv4 broadcast address, inside the network', (t) => {
  const v4 = cidrOf('10.0.1.0/24')!;
  t.true(isStructurallyReserved(v4, parseIp('10.0.1.0')!));
  t.true(isStructurallyReserved(v4, parseIp('10.0.1.255')!));
  t.true(isHostAddress(v4, parseIp('10.0.1.254')!));
  t.false(isHostAddress(v4, parseIp('10.0.2.1')!));
  const v6 = cidrOf('fd00:1::/64')!;
  t.true(isStructurallyReserved(v6, parseIp('fd00:1::')!));
  t.true(isHostAddress(v6, parseIp('fd00:1::ffff:ffff:ffff:ffff')!), 'IPv6 has no broadcast address');
  t.false(isHostAddress(v6, parseIp('10.0.1.2')!), 'another family is never inside');
});

test('the lowest free address skips the network, gateway, used and (IPv4) broadcast addresses', (t) => {
  t.is(lowestFreeAddress('172.18.0.0/16', '172.18.0.1', new Set()), '172.18.0.2/16');
  t.is(lowestFreeAddress('172.18.0.0/16', '172.18.0.1', new Set(['172.18.0.2', '172.18.0.4'])), '172.18.0.3/16');
  t.is(lowestFreeAddress('10.0.0.0/30', '10.0.0.1', new Set(['10.0.0.2'])), undefined, 'full: .3 is the broadcast address');
  t.is(lowestFreeAddress('fd00:9::/64', 'fd00:9::1', new Set(['fd00:9::2'])), 'fd00:9::3/64');
  t.is(lowestFreeAddress('nonsense', '', new Set()), undefined);
});
