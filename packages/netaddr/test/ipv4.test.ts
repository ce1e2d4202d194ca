import test from 'ava';
import { formatIpv4, ipv4CidrContains, parseIpv4, parseIpv4Cidr } from '../src/index.ts';

test('IPv4 as numbers: strict parsing, formatting, interface addresses and containment', (t) => {
  t.is(parseIpv4('10.0.1.2'), 0x0a000102);
  t.is(formatIpv4(0xffffffff), '255.255.255.255');
  for (const bad of ['10.0.01.1', '256.0.0.1', 'fd00::1', '10.1', ' 10.0.0.1']) t.is(parseIpv4(bad), undefined, bad);
  t.deepEqual(parseIpv4Cidr('172.18.0.5/16'), { address: 0xac120005, prefixLength: 16, network: 0xac120000 });
  t.is(parseIpv4Cidr('10.0.1.5/33'), undefined);
  t.is(parseIpv4Cidr('fd00::/64'), undefined, 'IPv6 is not an IPv4 CIDR');
  const c = parseIpv4Cidr('10.0.0.0/8')!;
  t.true(ipv4CidrContains(c, parseIpv4('10.255.255.255')!));
  t.false(ipv4CidrContains(c, parseIpv4('11.0.0.0')!));
  t.true(ipv4CidrContains(parseIpv4Cidr('0.0.0.0/0')!, 0xffffffff));
});
