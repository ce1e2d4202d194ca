import test from 'ava';
import { parseCidr, type Cidr } from '@kvnet/netaddr';
import { Ipam, InvalidRequestError, VNI_MAX, VNI_MIN } from '../src/index.ts';
import { buildPoolRecord, firstFreeSubnet, mergedIntervals, normalizePoolRequest, poolGeometry, sameRequest } from '../src/pool.ts';
import { makePoolId, parseDefaultPools, randomUla48 } from '../src/pool-table.ts';
import { nextFreeVni } from '../src/vni-allocator.ts';
import type { PoolRequest } from '../src/types.ts';
import type { KVStore } from '@kvnet/store';

const c = (text: string): Cidr => {
  const r = parseCidr(text);
  if (!r.ok) throw new Error(r.reason);
  return r.cidr;
};

test('invalid pool requests are refused naming the field and the value', (t) => {
  const cases: Array<[PoolRequest, string, RegExp]> = [
    [{ owner: '' }, 'owner', /non-empty/],
    [{ owner: 'n', subnet: '10.0.0.0' }, 'subnet', /prefix length/],
    [{ owner: 'n', subnet: '10.0.0.300/24' }, 'subnet', /not an IPv4 or IPv6/],
    [{ owner: 'n', subnet: '10.0.0.1/24' }, 'subnet', /host bits are set \(the network is 10\.0\.0\.0\/24\)/],
    [{ owner: 'n', subnet: '10.0.0.0/24', gateway: '10.0.1.1' }, 'gateway', /not inside subnet 10\.0\.0\.0\/24/],
    [{ owner: 'n', subnet: '10.0.0.0/24', gateway: '10.0.0.0' }, 'gateway', /network address/],
    [{ owner: 'n', subnet: '10.0.0.0/24', gateway: '10.0.0.255' }, 'gateway', /broadcast address/],
    [{ owner: 'n', subnet: '10.0.0.0/24', gateway: 'gw' }, 'gateway', /not an IPv4 or IPv6/],
    [{ owner: 'n', subnet: '10.0.0.0/24', gateway: '10.0.0.1/16' }, 'gateway', /differs from the pool's \/24/],
    [{ owner: 'n', subnet: '10.0.0.0/24', ipRange: '10.0.0.0/23' }, 'ipRange', /not inside subnet/],
    [{ owner: 'n', subnet: '10.0.0.0/24', ipRange: '10.0.1.0/25' }, 'ipRange', /not inside subnet/],
    [{ owner: 'n', subnet: '10.0.0.0/24', ipRange: 'bogus' }, 'ipRange', /prefix length/],
    [{ owner: 'n', subnet: '10.0.0.0/24', auxAddresses: { h: '10.0.1.5' } }, 'auxAddresses.h', /not inside subnet/],
    [{ owner: 'n', subnet: '10.0.0.0/24', gateway: '10.0.0.5', auxAddresses: { h: '10.0.0.5' } }, 'auxAddresses.h', /gateway/],
    [{ owner: 'n', subnet: '10.0.0.0/24', auxAddresses: { a: '10.0.0.5', b: '10.0.0.5' } }, 'auxAddresses.b', /also aux address "a"/],
    [{ owner: 'n', ipRange: '10.0.0.0/25' }, 'ipRange', /needs a subnet/],
    [{ owner: 'n', gateway: '10.0.0.1' }, 'gateway', /needs a subnet/],
    [{ owner: 'n', subnet: 'fd00::/48', v6: true }, 'subnet', /is larger than \/64: use a \/64 \(or smaller\) IPv6 subnet, or bound dynamic addresses with an ip-range of \/64 or smaller inside it/],
    [{ owner: 'n', subnet: 'fd00::/48', ipRange: 'fd00::/56' }, 'ipRange', /is larger than \/64: dynamic IPv6 addresses come from a \/64 or smaller range/],
    [{ owner: 'n', subnet: 'fd00:1::/64', ipRange: 'fd00:2::/80' }, 'ipRange', /not inside subnet fd00:1::\/64/],
    [{ owner: 'n', subnet: 'fd00:1::/64', gateway: 'fd00:2::1' }, 'gateway', /not inside subnet fd00:1::\/64/],
    [{ owner: 'n', subnet: 'fd00:1::/64', gateway: 'fd00:1::' }, 'gateway', /network address of fd00:1::\/64/],
    [{ owner: 'n', subnet: 'fd00:1::/64', auxAddresses: { r: 'fd00:9::5' } }, 'auxAddresses.r', /not inside subnet fd00:1::\/64/],
    [{ owner: 'n', subnet: 'fd00:1::/64', gateway: 'fd00:1::1', auxAddresses: { r: 'FD00:1::1' } }, 'auxAddresses.r', /is the gateway address/],
    [{ owner: 'n', subnet: 'fd00:1::1/64' }, 'subnet', /host bits are set \(the network is fd00:1::\/64\)/],
    [{ owner: 'n', subnet: '10.0.0.0/24', v6: true }, 'subnet', /IPv4 but an IPv6/],
    [{ owner: 'n', subnet: 'fd00::/64', v6: false }, 'subnet', /IPv6 but v6 is false/],
  ];
  for (const [req, field, reason] of cases) {
    const err = t.throws(() => normalizePoolRequest(req), { instanceOf: InvalidRequestError }, JSON.stringify(req));
    t.is(err?.field, field, JSON.stringify(req));
    t.regex(err!.message, reason);
    t.is(err?.code, 'KVNET_IPAM_INVALID_REQUEST');
    t.is(err?.kind, 'invalid');
    const value = field.startsWith('auxAddresses.') ? req.auxAddresses![field.slice(13)] : (req as unknown as Record<string, unknown>)[field];
    if (typeof value === 'string' && value !== '') t.true(err!.message.includes(value), err!.message);
  }
});

test('a pool record: default gateway is the first usable address (also for /31 and /32), values canonical', (t) => {
  const rec = (req: PoolRequest) => {
    const n = normalizePoolRequest(req);
    return buildPoolRecord(n, n.subnet!, makePoolId(n.subnet!), false);
  };
  t.is(rec({ owner: 'n', subnet: '10.1.0.0/16' }).gateway, '10.1.0.1/16');
  t.is(rec({ owner: 'n', subnet: '10.1.0.0/31' }).gateway, '10.1.0.0/31');
  t.is(rec({ owner: 'n', subnet: '10.1.0.7/32' }).gateway, '10.1.0.7/32');
  t.is(rec({ owner: 'n', subnet: 'FD00::/64' }).gateway, 'fd00::1/64');
  t.is(rec({ owner: 'n', subnet: '10.1.0.0/16', gateway: '10.1.2.3/16' }).gateway, '10.1.2.3/16');
  const r = rec({ owner: 'n', subnet: 'fd00::/64', auxAddresses: { x: 'FD00::00AB' }, ipRange: 'fd00::100/120' });
  t.deepEqual(r.auxAddresses, { x: 'fd00::ab' });
  t.is(r.ipRange, 'fd00::100/120');
  t.regex(r.id, /^fd00::-64-[0-9a-f]{12}$/);
  t.regex(makePoolId(c('10.0.0.0/8')), /^10\.0\.0\.0-8-[0-9a-f]{12}$/);
  t.true(sameRequest(r, normalizePoolRequest({ owner: 'n', subnet: 'fd00::/64', auxAddresses: { x: 'fd00::ab' }, ipRange: 'fd00::100/120' })));
  t.false(sameRequest(r, normalizePoolRequest({ owner: 'n', subnet: 'fd00::/64' })));
  t.true(JSON.stringify(rec({ owner: 'f'.repeat(64), subnet: '10.255.255.0/24' })).length < 400, 'a pool record is a few hundred bytes');
});

test('an IPv6 subnet larger than /64 is accepted with an ip-range of /64 or smaller, which bounds dynamic addresses; a default IPv6 request has no subnet', (t) => {
  const n = normalizePoolRequest({ owner: 'n', subnet: 'fd00::/48', ipRange: 'fd00:0:0:7::/64', v6: true });
  const g = poolGeometry(buildPoolRecord(n, n.subnet!, 'id', false));
  t.is(g.space.lo, 7n << 64n);
  t.is(g.space.hi, (8n << 64n) - 1n);
  t.deepEqual(normalizePoolRequest({ owner: 'n', v6: true }), { owner: 'n', addressSpace: 'global', family: 6, auxAddresses: {} });
  t.is(normalizePoolRequest({ owner: 'n', subnet: 'fd00::/80' }).family, 6, 'longer prefixes are fine');
});

test('pool geometry: reserved ordinals with labels, ranges, shard sizes for /8 … /32', (t) => {
  const n = normalizePoolRequest({ owner: 'n', subnet: '10.0.0.0/24', auxAddresses: { p: '10.0.0.9' }, ipRange: '10.0.0.128/25' });
  const g = poolGeometry(buildPoolRecord(n, n.subnet!, 'id', false));
  t.deepEqual([...g.reservedLabels].sort((a, b) => Number(a[0] - b[0])), [
    [0n, '(network)'],
    [1n, '(gateway)'],
    [9n, '(aux:p)'],
    [255n, '(broadcast)'],
  ]);
  t.is(g.space.lo, 128n);
  t.is(g.space.hi, 255n);
  const shard = (subnet: string): number => {
    const m = normalizePoolRequest({ owner: 'n', subnet });
    return poolGeometry(buildPoolRecord(m, m.subnet!, 'id', false)).shardSize;
  };
  t.is(shard('10.0.0.0/8'), 256);
  t.is(shard('10.0.0.0/28'), 16);
  t.is(shard('10.0.0.0/31'), 2);
  t.is(shard('10.0.0.0/32'), 1);
  t.is(shard('fd00::/64'), 256);
});

test('default subnets: the first free /24 of 10.0.0.0/8 skipping every overlap, in O(taken) steps', (t) => {
  const base = c('10.0.0.0/8');
  t.deepEqual(firstFreeSubnet(base, 24, []), c('10.0.0.0/24'));
  t.deepEqual(firstFreeSubnet(base, 24, mergedIntervals([c('10.0.0.0/24'), c('10.0.1.0/24')])), c('10.0.2.0/24'));
  t.deepEqual(firstFreeSubnet(base, 24, mergedIntervals([c('10.0.0.0/16')])), c('10.1.0.0/24'));
  t.deepEqual(firstFreeSubnet(base, 24, mergedIntervals([c('10.0.0.128/25')])), c('10.0.1.0/24'), 'a smaller pool blocks its /24');
  t.deepEqual(firstFreeSubnet(base, 24, mergedIntervals([c('0.0.0.0/5'), c('10.0.0.0/24')])), c('10.0.1.0/24'));
  t.is(firstFreeSubnet(base, 24, mergedIntervals([c('10.0.0.0/8')])), undefined);
  t.is(firstFreeSubnet(base, 24, mergedIntervals([c('0.0.0.0/0')])), undefined);
  // a /8 of /24s with every other one taken: 32768 pools, answer found without scanning candidates one by one
  const taken: Cidr[] = [];
  for (let i = 0; i < 65_536; i += 2) taken.push({ family: 4, base: c('10.0.0.0/8').base + BigInt(i) * 256n, prefix: 24 });
  taken.push(c('10.0.1.0/24'));
  t.deepEqual(firstFreeSubnet(base, 24, mergedIntervals(taken)), c('10.0.3.0/24'));
  t.is(mergedIntervals(taken).length, 32_767);
});

test('default pool options are validated', (t) => {
  t.deepEqual(parseDefaultPools([{ base: '172.16.0.0/12', size: 20 }]), [{ base: c('172.16.0.0/12'), size: 20 }]);
  for (const bad of [
    { base: '10.0.0.0/8', size: 7 },
    { base: '10.0.0.0/8', size: 33 },
    { base: 'fd00::/48', size: 64 },
    { base: '10.0.0.1/8', size: 24 },
  ]) {
    t.throws(() => parseDefaultPools([bad]), { instanceOf: InvalidRequestError }, JSON.stringify(bad));
  }
  t.deepEqual(parseDefaultPools([{ base: 'fd00:aa::/48', size: 64 }], 6), [{ base: c('fd00:aa::/48'), size: 64 }]);
  for (const [bad, reason] of [
    [{ base: 'fd00::/48', size: 56 }, /defaultPools6\[0\]\.size 56: must be an integer between 64 and 126/],
    [{ base: 'fd00::/48', size: 127 }, /between 64 and 126/],
    [{ base: '10.0.0.0/8', size: 24 }, /defaultPools6\[0\]\.base "10\.0\.0\.0\/8": defaultPools6 are IPv6/],
  ] as const) {
    t.throws(() => parseDefaultPools([bad], 6), { instanceOf: InvalidRequestError, message: reason }, JSON.stringify(bad));
  }
  const store = { capabilities: { maxTxnOps: 64, maxValueBytes: 1 << 20, exactHistory: true } } as unknown as KVStore;
  t.throws(() => new Ipam({ store, maxAttempts: 0 }), { instanceOf: InvalidRequestError });
  t.throws(() => new Ipam({ store, defaultPools: [{ base: 'nope', size: 24 }] }), { message: /defaultPools\[0\]\.base/ });
  t.throws(() => new Ipam({ store, defaultPools6: [{ base: 'fd00::/48', size: 48 }] }), { message: /defaultPools6\[0\]\.size/ });
  t.notThrows(() => new Ipam({ store }));
});

test('the cluster ULA: fd00::/8 and 40 random bits, a /48', (t) => {
  const seen = new Set<bigint>();
  for (let i = 0; i < 50; i++) {
    const u = randomUla48();
    t.is(u.prefix, 48);
    t.is(u.base >> 120n, 0xfdn);
    t.is(u.base & ((1n << 80n) - 1n), 0n);
    seen.add(u.base);
  }
  t.true(seen.size > 45, 'random');
});

test('next free VNI: serial from the cursor, wrapping, skipping used ids', (t) => {
  t.is(nextFreeVni(VNI_MIN, new Set()), VNI_MIN);
  t.is(nextFreeVni(0, new Set()), VNI_MIN);
  t.is(nextFreeVni(300, new Set([300, 301])), 302);
  t.is(nextFreeVni(VNI_MAX, new Set([VNI_MAX])), VNI_MIN);
  t.is(nextFreeVni(VNI_MAX, new Set([VNI_MAX, VNI_MIN])), VNI_MIN + 1);
});
