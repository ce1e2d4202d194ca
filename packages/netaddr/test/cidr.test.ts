import test from 'ava';
import { isIP } from 'node:net';
import {
  cidrContains,
  cidrContainsIp,
  cidrLast,
  cidrOverlaps,
  cidrSize,
  firstUsableOrdinal,
  formatCidr,
  formatIp,
  parseCidr,
  parseIp,
  structuralReserved,
  subnetsOf,
  type Cidr,
} from '../src/index.ts';

const c = (text: string): Cidr => {
  const r = parseCidr(text);
  if (!r.ok) throw new Error(`${text}: ${r.reason}`);
  return r.cidr;
};

test('IPv4 addresses parse strictly and format back', (t) => {
  for (const ip of ['0.0.0.0', '10.0.0.1', '255.255.255.255', '192.168.1.100']) {
    const p = parseIp(ip);
    t.is(p?.family, 4, ip);
    t.is(formatIp(4, p!.value), ip);
  }
  t.is(parseIp('10.0.0.1')!.value, 0x0a000001n);
  for (const bad of ['10.0.0', '10.0.0.256', '010.0.0.1', '10.0.0.1.', '1e1.0.0.1', ' 10.0.0.1', '10.0.0.-1', '', '10..0.1', '0x0a.0.0.1']) {
    t.is(parseIp(bad), undefined, bad);
  }
});

test('IPv6 addresses parse (with ::, mixed IPv4 tail) and format per RFC 5952', (t) => {
  const cases: Array<[string, string]> = [
    ['::', '::'],
    ['::1', '::1'],
    ['fd00::', 'fd00::'],
    ['FD00:0000:0000:0001:0000:0000:0000:0001', 'fd00:0:0:1::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs
    ['2001:db8::0:1', '2001:db8::1'],
    ['2001:db8:1:1:1:1:1:0', '2001:db8:1:1:1:1:1:0'], // a single zero group is not compressed
    ['::ffff:10.1.2.3', '::ffff:a01:203'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
  ];
  for (const [input, canonical] of cases) {
    const p = parseIp(input);
    t.is(p?.family, 6, input);
    t.is(formatIp(6, p!.value), canonical, input);
    t.is(isIP(canonical), 6);
  }
  for (const bad of ['1:2:3:4:5:6:7:8:9', '1::2::3', 'fe80::1%eth0', '12345::', ':1', '1:', 'g::1', '1:2:3:4:5:6:7', '::1.2.3']) {
    t.is(parseIp(bad), undefined, bad);
  }
});

test('formatIp(6) agrees with the round trip through parseIp for random values', (t) => {
  for (let i = 0; i < 500; i++) {
    let v = 0n;
    for (let g = 0; g < 8; g++) v = (v << 16n) | BigInt(Math.random() < 0.4 ? 0 : Math.floor(Math.random() * 65536));
    const text = formatIp(6, v);
    t.is(isIP(text), 6, text);
    t.is(parseIp(text)!.value, v, text);
  }
});

test('CIDRs: host bits refused naming the network, prefix bounds, sizes and last addresses incl. /8 /31 /32', (t) => {
  const host = parseCidr('10.0.0.1/24');
  t.false(host.ok);
  if (!host.ok) {
    t.regex(host.reason, /10\.0\.0\.0\/24/);
    t.is(host.canonical, '10.0.0.0/24');
  }
  for (const bad of ['10.0.0.0', '10.0.0.0/33', '10.0.0.0/-1', '10.0.0.0/08', 'fd00::/129', 'x/8', '10.0.0.0/']) t.false(parseCidr(bad).ok, bad);
  t.is(cidrSize(c('10.0.0.0/8')), 16_777_216n);
  t.is(formatIp(4, cidrLast(c('10.0.0.0/8'))), '10.255.255.255');
  t.is(cidrSize(c('10.0.0.0/31')), 2n);
  t.is(cidrSize(c('10.0.0.7/32')), 1n);
  t.is(formatIp(4, cidrLast(c('10.0.0.7/32'))), '10.0.0.7');
  t.is(cidrSize(c('fd00::/64')), 1n << 64n);
  t.is(cidrSize(c('0.0.0.0/0')), 1n << 32n);
  t.is(formatCidr(c('FD00:0:0:0::/48')), 'fd00::/48');
});

test('containment and overlap', (t) => {
  t.true(cidrContains(c('10.0.0.0/8'), c('10.1.0.0/16')));
  t.true(cidrContains(c('10.1.0.0/16'), c('10.1.0.0/16')));
  t.false(cidrContains(c('10.1.0.0/16'), c('10.0.0.0/8')));
  t.false(cidrContains(c('10.1.0.0/16'), c('10.2.0.0/24')));
  t.true(cidrOverlaps(c('10.0.0.0/8'), c('10.255.255.255/32')));
  t.true(cidrOverlaps(c('10.1.0.0/24'), c('10.0.0.0/15')));
  t.false(cidrOverlaps(c('10.1.0.0/24'), c('10.1.1.0/24')));
  t.false(cidrOverlaps(c('10.0.0.0/8'), c('::/0')), 'families never overlap');
  t.true(cidrContainsIp(c('10.0.0.0/31'), parseIp('10.0.0.1')!));
  t.false(cidrContainsIp(c('10.0.0.0/31'), parseIp('10.0.0.2')!));
});

test('structurally reserved ordinals: network and broadcast, none for /31 and /32 (RFC 3021), network only for IPv6', (t) => {
  t.deepEqual(structuralReserved(c('10.0.0.0/24')), { network: 0n, broadcast: 255n });
  t.deepEqual(structuralReserved(c('10.0.0.0/8')), { network: 0n, broadcast: 16_777_215n });
  t.deepEqual(structuralReserved(c('10.0.0.0/30')), { network: 0n, broadcast: 3n });
  t.deepEqual(structuralReserved(c('10.0.0.0/31')), {});
  t.deepEqual(structuralReserved(c('10.0.0.0/32')), {});
  t.deepEqual(structuralReserved(c('fd00::/64')), { network: 0n });
  t.deepEqual(structuralReserved(c('fd00::/127')), {});
  t.is(firstUsableOrdinal(c('10.0.0.0/24')), 1n);
  t.is(firstUsableOrdinal(c('10.0.0.0/31')), 0n);
  t.is(firstUsableOrdinal(c('10.0.0.0/32')), 0n);
});

test('subnetsOf walks a base in steps, from an aligned start', (t) => {
  const first = [...subnetsOf(c('10.0.0.0/22'), 24)].map((v) => formatIp(4, v));
  t.deepEqual(first, ['10.0.0.0', '10.0.1.0', '10.0.2.0', '10.0.3.0']);
  const from = [...subnetsOf(c('10.0.0.0/22'), 24, parseIp('10.0.1.7')!.value)].map((v) => formatIp(4, v));
  t.deepEqual(from, ['10.0.2.0', '10.0.3.0']);
  let n = 0;
  for (const _ of subnetsOf(c('10.0.0.0/8'), 24)) n++;
  t.is(n, 65_536);
});
