import test from 'ava';
import { canonicalIp, ipBytes, ipFamily, parseIp } from '../src/index.ts';

test('canonical text and family of an address, or undefined', (t) => {
  t.is(canonicalIp('FD00:0000:0:1::0001'), 'fd00:0:0:1::1');
  t.is(canonicalIp('10.0.0.1'), '10.0.0.1');
  t.is(canonicalIp('10.0.0.1/24'), undefined, 'a prefix length is not part of an address');
  t.is(canonicalIp('fe80::1%eth0'), undefined, 'zone ids are refused');
  t.is(ipFamily('::1'), 6);
  t.is(ipFamily('127.0.0.1'), 4);
  t.is(ipFamily('localhost'), undefined);
});

test('bytes in network order', (t) => {
  t.deepEqual([...ipBytes(parseIp('10.1.2.3')!)], [10, 1, 2, 3]);
  t.deepEqual([...ipBytes(parseIp('fd00::1:2')!)], [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]);
});

test('the IPv4 fast path of canonicalIp agrees with parsing for every kind of octet', (t) => {
  for (const text of ['0.0.0.0', '9.99.100.199', '200.249.250.255', '255.255.255.255', '10.0.1.2']) t.is(canonicalIp(text), text);
  for (const text of ['256.0.0.1', '01.0.0.1', '1.2.3', '1.2.3.4.', '1.2.3.04']) t.is(canonicalIp(text), undefined, text);
});
