import test from 'ava';
import type { ClusterView } from '../../src/cluster-view.ts';
import type { EndpointRecord, NetworkRecord } from '../../src/layout.ts';
import { decodeMessage, encodeQuery, QTYPE, RCODE } from '../../src/names/dns-codec.ts';
import { InvalidNameTableError } from '../../src/names/errors.ts';
import { addressOfPtrName, compileTable, lookup, scopeFor, type ListenerRef } from '../../src/names/name-lookup.ts';
import { buildNameTable, listenersFor, localSandboxes, routeHolder, validateNameTable } from '../../src/names/name-table.ts';
import { NAME_TTL_S } from '../../src/names/names.ts';
import { planReply } from '../../src/names/responder.ts';

const net = (id: string, name: string, internal = false): NetworkRecord => ({
  id, name, vni: 300, poolId: 'p', subnet: '10.0.0.0/8', gateway: '10.0.0.1', auxAddresses: {}, internal, labels: {}, options: {}, createdAt: '', createdBy: 'h1',
});
let clock = 0;
const ep = (id: string, network: string, name: string, ip: string, node: string, extra: Record<string, unknown> = {}): EndpointRecord => ({
  id, name, network, node, nodeId: node, address: `${ip}/24`, ip, mac: '02:42:00:00:00:00', createdAt: `2026-01-01T00:00:${String(clock++).padStart(2, '0')}Z`, ...extra,
} as EndpointRecord);

/**
 * Networks: multi (A), other (B), secret (internal, I), far (no local endpoint).
 * On h1: c1 (A) and both (A + B, one sandbox), ci (I). On h2: c2 (A, alias web), b2 (B), i2 (I), f2 (far).
 */
function view(): ClusterView {
  const networks = new Map([
    ['A', net('A', 'multi')],
    ['B', net('B', 'other')],
    ['I', net('I', 'secret', true)],
    ['F', net('F', 'far')],
  ]);
  const eps = [
    ep('e-c1', 'A', 'c1', '10.1.0.2', 'h1', { netns: '/run/netns/c1' }),
    ep('e-bothA', 'A', 'both', '10.1.0.3', 'h1', { netns: '/run/netns/both' }),
    ep('e-bothB', 'B', 'both', '10.2.0.3', 'h1', { netns: '/run/netns/both' }),
    ep('e-ci', 'I', 'ci', '10.3.0.2', 'h1', { netns: '/run/netns/ci' }),
    ep('e-c2', 'A', 'c2', '10.1.0.4', 'h2', { aliases: ['web', 'c2'], ip6: 'fd00:0::4' }),
    ep('e-web2', 'A', 'c5', '10.1.0.5', 'h2', { aliases: ['web'] }),
    ep('e-b2', 'B', 'b2', '10.2.0.4', 'h2'),
    ep('e-i2', 'I', 'i2', '10.3.0.4', 'h2'),
    ep('e-f2', 'F', 'f2', '10.4.0.4', 'h2'),
    ep('e-orphan', 'GONE', 'orphan', '10.9.0.9', 'h1', { netns: '/run/netns/orphan' }),
  ];
  const endpoints = new Map<string, Map<string, EndpointRecord>>();
  for (const e of eps) {
    if (!endpoints.has(e.network)) endpoints.set(e.network, new Map());
    endpoints.get(e.network)!.set(e.id, e);
  }
  return { networks, endpoints, nodes: new Map() };
}

const table = () => buildNameTable(view(), localSandboxes(view(), 'h1'));
const A: ListenerRef = { kind: 'overlay', network: 'A' };
const B: ListenerRef = { kind: 'overlay', network: 'B' };
const I: ListenerRef = { kind: 'overlay', network: 'I' };
const q = (name: string, type: number = QTYPE.A) => ({ name, type, class: 1 });

function ask(listener: ListenerRef, source: string, name: string, type: number = QTYPE.A) {
  const plan = planReply(compileTable(table()), encodeQuery(42, name, type), { listener, source, transport: 'udp' });
  if (plan.kind !== 'reply') return plan.kind;
  const m = decodeMessage(plan.bytes);
  return { rcode: m.header.rcode, aa: m.header.aa, ra: m.header.ra, answers: m.answers.map((a) => a.data), ttls: m.answers.map((a) => a.ttl) };
}

test('localSandboxes groups this node\'s endpoints by netns (or the given sandbox key), nobody else\'s', (t) => {
  t.deepEqual(localSandboxes(view(), 'h1'), [
    { key: '/run/netns/both', endpoints: ['e-bothA', 'e-bothB'] },
    { key: '/run/netns/c1', endpoints: ['e-c1'] },
    { key: '/run/netns/ci', endpoints: ['e-ci'] },
    { key: '/run/netns/orphan', endpoints: ['e-orphan'] },
  ]);
  const docker = localSandboxes(view(), 'h2', (id) => (id === 'e-c2' || id === 'e-b2' ? 'SBX' : undefined));
  t.deepEqual(docker.find((s) => s.key === 'SBX')?.endpoints, ['e-b2', 'e-c2']);
  t.true(docker.some((s) => s.key === 'endpoint:e-i2'));
});

test('the table holds the local sandboxes\' networks with every endpoint on any host, and each sandbox\'s sources', (t) => {
  const tb = table();
  t.deepEqual(tb.networks.map((n) => n.name), ['multi', 'other', 'secret']);
  t.deepEqual(tb.networks.find((n) => n.id === 'A')!.records.map((r) => r.name), ['both', 'c1', 'c2', 'c5']);
  t.deepEqual(tb.networks.find((n) => n.id === 'A')!.records.find((r) => r.name === 'c2'), { endpoint: 'e-c2', name: 'c2', aliases: ['web'], ip: '10.1.0.4', ip6: 'fd00:0::4' });
  const both = tb.sandboxes.find((s) => s.key === '/run/netns/both')!;
  t.deepEqual(both.networks, ['A', 'B']);
  t.deepEqual(both.sources, [{ network: 'A', ip: '10.1.0.3' }, { network: 'B', ip: '10.2.0.3' }]);
  t.true(both.forward);
  t.false(tb.sandboxes.find((s) => s.key === '/run/netns/ci')!.forward);
  t.false(tb.sandboxes.some((s) => s.key === '/run/netns/orphan'), 'an endpoint of a network without a record is left out');
  t.deepEqual(validateNameTable(JSON.parse(JSON.stringify(tb))), tb);
});

test('a container resolves names (any host) and <name>.<network> of its own network, with TTL 0', (t) => {
  t.deepEqual(ask(A, '10.1.0.2', 'c2'), { rcode: RCODE.NOERROR, aa: true, ra: true, answers: ['10.1.0.4'], ttls: [NAME_TTL_S] });
  t.deepEqual(ask(A, '10.1.0.2', 'C2.Multi'), { rcode: RCODE.NOERROR, aa: true, ra: true, answers: ['10.1.0.4'], ttls: [0] });
  t.deepEqual(ask(A, '10.1.0.2', 'c2', QTYPE.AAAA), { rcode: RCODE.NOERROR, aa: true, ra: true, answers: ['fd00::4'], ttls: [0] });
  // a name without an IPv6 address: NODATA, not forwarded
  t.deepEqual(ask(A, '10.1.0.2', 'c1', QTYPE.AAAA), { rcode: RCODE.NOERROR, aa: true, ra: true, answers: [], ttls: [] });
  t.deepEqual(ask(A, '10.1.0.2', 'c1', QTYPE.MX), { rcode: RCODE.NOERROR, aa: true, ra: true, answers: [], ttls: [] });
});

test('an alias shared by two endpoints answers both addresses; aliases win over names', (t) => {
  const r = ask(A, '10.1.0.2', 'web') as { answers: string[] };
  t.deepEqual([...r.answers].sort(), ['10.1.0.4', '10.1.0.5']);
  t.deepEqual((ask(A, '10.1.0.2', 'web.multi') as { answers: string[] }).answers.sort(), ['10.1.0.4', '10.1.0.5']);
});

test('PTR for an address of the asker\'s networks answers <name>.<network>.', (t) => {
  t.deepEqual((ask(A, '10.1.0.2', '4.0.1.10.in-addr.arpa', QTYPE.PTR) as { answers: string[] }).answers, ['c2.multi']);
  t.deepEqual((ask(A, '10.1.0.2', '4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa', QTYPE.PTR) as { answers: string[] }).answers, ['c2.multi']);
  t.is(ask(A, '10.1.0.2', '4.0.2.10.in-addr.arpa', QTYPE.PTR), 'forward', 'an address of network B is not A\'s to answer');
  t.is(addressOfPtrName('1.2.3.in-addr.arpa'), undefined);
  t.is(addressOfPtrName('01.2.3.4.in-addr.arpa'), undefined);
});

test('isolation: names of network B do not leak to a container only on A; other names are forwarded', (t) => {
  t.is(ask(A, '10.1.0.2', 'b2'), 'forward');
  t.is(ask(A, '10.1.0.2', 'b2.other'), 'forward');
  t.is(ask(A, '10.1.0.2', 'f2'), 'forward');
  t.is(ask(A, '10.1.0.2', 'i2'), 'forward');
  t.is(ask(A, '10.1.0.2', 'www.example.com'), 'forward');
});

test('a sandbox on two networks resolves both, whichever listener its query arrives on', (t) => {
  t.deepEqual((ask(A, '10.1.0.3', 'b2') as { answers: string[] }).answers, ['10.2.0.4']);
  t.deepEqual((ask(B, '10.2.0.3', 'c2') as { answers: string[] }).answers, ['10.1.0.4']);
  // "both" exists on A and B: the arrival network's address comes first
  t.deepEqual((ask(A, '10.1.0.3', 'both') as { answers: string[] }).answers, ['10.1.0.3']);
  t.deepEqual((ask(B, '10.2.0.3', 'both') as { answers: string[] }).answers, ['10.2.0.3']);
  t.deepEqual((ask(B, '10.2.0.3', 'both.multi') as { answers: string[] }).answers, ['10.1.0.3']);
});

test('internal-only sandbox: its names resolve, everything else is REFUSED with RA clear', (t) => {
  t.deepEqual((ask(I, '10.3.0.2', 'i2') as { answers: string[] }).answers, ['10.3.0.4']);
  t.deepEqual(ask(I, '10.3.0.2', 'www.example.com'), { rcode: RCODE.REFUSED, aa: false, ra: false, answers: [], ttls: [] });
  t.like(ask(I, '10.3.0.2', 'c2'), { rcode: RCODE.REFUSED });
});

test('an unknown source gets its arrival network\'s names, and forwarding unless that network is internal', (t) => {
  t.deepEqual((ask(A, '10.1.0.99', 'c2') as { answers: string[] }).answers, ['10.1.0.4']);
  t.is(ask(A, '10.1.0.99', 'b2'), 'forward');
  t.like(ask(I, '10.3.0.99', 'www.example.com'), { rcode: RCODE.REFUSED });
  t.like(ask({ kind: 'overlay', network: 'nope' }, '10.1.0.2', 'c2'), { rcode: RCODE.REFUSED });
});

test('the host listener answers no names to unknown sources and forwards; a sandbox\'s host source gets its names', (t) => {
  t.is(ask({ kind: 'host' }, '172.17.0.2', 'c2'), 'forward');
  const tb = buildNameTable(view(), [{ key: '/run/netns/c1', endpoints: ['e-c1'], hostSources: ['172.18.0.2'] }]);
  const scope = scopeFor(compileTable(tb), { kind: 'host' }, '172.18.0.2');
  t.deepEqual(lookup(scope, q('c2')), { kind: 'records', answers: [{ type: QTYPE.A, ttl: 0, data: '10.1.0.4' }] });
});

test('a removed endpoint stops resolving as soon as the table is rebuilt', (t) => {
  const v = view();
  (v.endpoints.get('A') as Map<string, EndpointRecord>).delete('e-c2');
  const scope = scopeFor(compileTable(buildNameTable(v, localSandboxes(v, 'h1'))), A, '10.1.0.2');
  t.deepEqual(lookup(scope, q('c2')), { kind: 'not-found' });
  t.deepEqual(lookup(scope, q('c5')).kind, 'records');
});

test('forward: true on a sandbox overrides internal-only (egress through a non-kvnet network)', (t) => {
  const tb = buildNameTable(view(), [{ key: '/run/netns/ci', endpoints: ['e-ci'], forward: true }]);
  t.true(scopeFor(compileTable(tb), I, '10.3.0.2').forward);
});

test('routeHolder is the oldest endpoint of a sandbox', (t) => {
  t.is(routeHolder([{ id: 'b', createdAt: '2' }, { id: 'a', createdAt: '3' }, { id: 'c', createdAt: '2' }]), 'b');
  t.is(routeHolder([]), undefined);
});

test('validateNameTable names the first bad field', (t) => {
  t.throws(() => validateNameTable({ format: 2, networks: [], sandboxes: [] }), { instanceOf: InvalidNameTableError, message: /format is 2/ });
  t.throws(() => validateNameTable({ format: 1, networks: [{ id: 'x', name: 'n', internal: false, records: [{ endpoint: 'e', name: 'c', ip: '1.2.3.4' }] }], sandboxes: [] }), { message: /networks\[0\]\.records\[0\]/ });
  t.throws(() => validateNameTable({ format: 1, networks: [], sandboxes: [{ key: 'k', networks: [], sources: [{ network: 1 }], hostSources: [], forward: true }] }), { message: /sandboxes\[0\]\.sources\[0\]/ });
  t.throws(() => validateNameTable(null), { message: /not an object/ });
});

test('a 64-character endpoint name (allowed) resolves by A; its PTR, which cannot go on the wire, is not answered, and nothing throws', (t) => {
  const long = 'x'.repeat(64);
  const v = view();
  (v.endpoints.get('A') as Map<string, EndpointRecord>).set('e-long', ep('e-long', 'A', long, '10.1.0.77', 'h2'));
  const compiled = compileTable(buildNameTable(v, localSandboxes(v, 'h1')));
  const plan = planReply(compiled, encodeQuery(1, '77.0.1.10.in-addr.arpa', QTYPE.PTR), { listener: A, source: '10.1.0.2', transport: 'udp' });
  t.is(plan.kind, 'forward');
  t.deepEqual(lookup(scopeFor(compiled, A, '10.1.0.2'), q('c2')).kind, 'records');
});

test('listenersFor: one per table network, at the path given for it', (t) => {
  t.deepEqual(listenersFor(table(), (nid) => `/run/netns/kvnet-${nid}`), [
    { network: 'A', netns: '/run/netns/kvnet-A' },
    { network: 'B', netns: '/run/netns/kvnet-B' },
    { network: 'I', netns: '/run/netns/kvnet-I' },
  ]);
});

test('an endpoint of an IPv6-only network (its IPv6 address in ip, as layout.ts records it) answers AAAA and its ip6.arpa PTR, no A', (t) => {
  const v = view();
  (v.networks as Map<string, NetworkRecord>).set('S', net('S', 'six'));
  const six = new Map([
    ['e-s1', ep('e-s1', 'S', 's1', 'fd00:6::2', 'h1', { netns: '/run/netns/s1', ip6: 'fd00:6::2' })],
    ['e-s2', ep('e-s2', 'S', 's2', 'fd00:6::3', 'h2')],
    ['e-s3', ep('e-s3', 'S', 's3', '10.6.0.3', 'h2')],
  ]);
  (v.endpoints as Map<string, Map<string, EndpointRecord>>).set('S', six);
  const compiled = compileTable(buildNameTable(v, localSandboxes(v, 'h1')));
  const scope = scopeFor(compiled, { kind: 'overlay', network: 'S' }, '10.6.0.9');
  t.deepEqual(lookup(scope, q('s2', QTYPE.AAAA)), { kind: 'records', answers: [{ type: QTYPE.AAAA, ttl: NAME_TTL_S, data: 'fd00:6::3' }] });
  t.deepEqual(lookup(scope, q('s2', QTYPE.A)), { kind: 'records', answers: [] }, 'the name exists: NODATA for A, not forwarded');
  t.deepEqual(lookup(scope, q('s3', QTYPE.A)), { kind: 'records', answers: [{ type: QTYPE.A, ttl: NAME_TTL_S, data: '10.6.0.3' }] });
  const ptr = lookup(scope, q(`3.0.0.0.${'0.0.0.0.'.repeat(5)}6.0.0.0.0.0.d.f.ip6.arpa`, QTYPE.PTR));
  t.deepEqual(ptr, { kind: 'records', answers: [{ type: QTYPE.PTR, ttl: NAME_TTL_S, data: 's2.six.' }] });
});
