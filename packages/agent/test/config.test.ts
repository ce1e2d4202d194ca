import test from 'ava';
import { parseStoreOpts } from '@kvnet/store';
import { DEFAULT_STORE_URL, parseTtl, resolveAdvertise, resolveStoreUrl, validateConfig, type AgentConfig } from '../src/config.ts';
import { lowestFreeAddress } from '../src/ipv4.ts';
import { parseListenAddress } from '../src/metrics.ts';

const ifaces = {
  lo: [{ address: '127.0.0.1', family: 'IPv4', internal: true, netmask: '', mac: '', cidr: null }],
  eth0: [
    { address: 'fe80::1', family: 'IPv6', internal: false, netmask: '', mac: '', cidr: null, scopeid: 0 },
    { address: '198.18.0.7', family: 'IPv4', internal: false, netmask: '', mac: '', cidr: null },
  ],
  eth1: [{ address: 'fe80::2', family: 'IPv6', internal: false, netmask: '', mac: '', cidr: null, scopeid: 0 }],
} as unknown as ReturnType<typeof import('node:os').networkInterfaces>;

test('advertise: an IP, an IP with a port, or an interface name', (t) => {
  t.deepEqual(resolveAdvertise('198.18.0.1', ifaces), { ip: '198.18.0.1', address: '198.18.0.1' });
  t.deepEqual(resolveAdvertise('198.18.0.1:2376', ifaces), { ip: '198.18.0.1', address: '198.18.0.1:2376' });
  t.deepEqual(resolveAdvertise('eth0:7946', ifaces), { ip: '198.18.0.7', address: '198.18.0.7:7946' });
  t.throws(() => resolveAdvertise('eth9', ifaces), { message: /no interface eth9 that is up with an address in this network namespace \(have: lo, eth0, eth1\)/ });
  t.throws(() => resolveAdvertise('eth1', ifaces), { message: /interface eth1 has no IPv4 address/ });
  t.throws(() => resolveAdvertise('lo', ifaces), { message: /127\.0\.0\.1 cannot be reached/ });
  t.throws(() => resolveAdvertise('1.2.3', ifaces), { message: /not an IPv4 address/ });
  t.throws(() => resolveAdvertise('198.18.0.1:99999', ifaces), { message: /port 99999/ });
});

test('advertise: an IPv6 underlay address, bare or bracketed with a port, written canonically', (t) => {
  t.deepEqual(resolveAdvertise('2001:2::1', ifaces), { ip: '2001:2::1', address: '2001:2::1' });
  t.deepEqual(resolveAdvertise('[2001:0002:0:0::A]:7946', ifaces), { ip: '2001:2::a', address: '[2001:2::a]:7946' });
  t.throws(() => resolveAdvertise('fe80::1', ifaces), { message: /fe80::1 cannot be reached by other hosts/ });
  t.throws(() => resolveAdvertise('[::1]', ifaces), { message: /::1 cannot be reached/ });
  t.throws(() => resolveAdvertise('[2001:2::1]:0', ifaces), { message: /port 0 is not 1…65535/ });
  t.throws(() => resolveAdvertise('[2001:2::zz]', ifaces), { message: /not an IPv6 address/ });
});

test('ttl durations', (t) => {
  t.is(parseTtl('10s'), 10);
  t.is(parseTtl('1m'), 60);
  t.is(parseTtl('5000ms'), 5);
  t.is(parseTtl('30'), 30);
  t.is(parseTtl('1m30s'), 90);
  t.is(parseTtl('2.5s'), 3);
  t.throws(() => parseTtl('1s'), { message: /between 2s and 10m/ });
  t.throws(() => parseTtl('ten'), { message: /invalid --ttl "ten"/ });
});

test('kv.timeout takes a duration as the docs write it; a bare number stays milliseconds', (t) => {
  const url = 'etcd://127.0.0.1:2379/kvnet';
  t.is(parseStoreOpts(url, ['kv.timeout=10s']).timeoutMs, 10_000);
  t.is(parseStoreOpts(url, ['kv.timeout=1500ms']).timeoutMs, 1_500);
  t.is(parseStoreOpts(url, ['kv.timeout=3000']).timeoutMs, 3_000);
  t.is(parseStoreOpts(url, ['kv.timeout=1m']).timeoutMs, 60_000);
  t.throws(() => parseStoreOpts(url, ['kv.timeout=soon']), { message: /kv\.timeout must be a duration between 100ms and 10m \(e\.g\. 10s, 1500ms\), got "soon"/ });
  t.throws(() => parseStoreOpts(url, ['kv.timeout=11m']), { message: /kv\.timeout must be a duration between 100ms and 10m/ });
});

test('kv.maxwatches: the watches one Consul client holds at most; a value that is not a whole number in range is refused naming it', (t) => {
  const url = 'consul://127.0.0.1:8500/kvnet';
  t.is(parseStoreOpts(url, ['kv.maxwatches=400']).maxWatches, 400);
  t.is(parseStoreOpts(url, []).maxWatches, undefined);
  for (const bad of ['7', '100001', 'many', '1e3', '-5', '']) {
    t.throws(() => parseStoreOpts(url, [`kv.maxwatches=${bad}`]), { message: new RegExp(`kv\\.maxwatches must be a whole number between 8 and 100000, got "${bad}"`) });
  }
});

test('kv.watchrate: the keys per second one Consul client\'s watches read during a burst; a value out of range is refused naming it', (t) => {
  const url = 'consul://127.0.0.1:8500/kvnet';
  t.is(parseStoreOpts(url, ['kv.watchrate=2000']).watchReadRate, 2_000);
  t.is(parseStoreOpts(url, []).watchReadRate, undefined);
  for (const bad of ['9', '10000001', 'fast', '1e3', '-5', '']) {
    t.throws(() => parseStoreOpts(url, [`kv.watchrate=${bad}`]), { message: new RegExp(`kv\\.watchrate must be a whole number of keys per second between 10 and 10000000, got "${bad}"`) });
  }
});

test('the store: --cluster-store as given; the embedded store only when asked for', (t) => {
  t.is(resolveStoreUrl('etcd://10.0.0.5:2379/kvnet', false), 'etcd://10.0.0.5:2379/kvnet');
  t.is(resolveStoreUrl('local:///srv/kvnet.db', false), 'local:///srv/kvnet.db');
  t.is(resolveStoreUrl(undefined, true), DEFAULT_STORE_URL);
  t.is(resolveStoreUrl('local:///srv/kvnet.db', true), 'local:///srv/kvnet.db');
  t.throws(() => resolveStoreUrl(undefined, false), { code: 'KVNET_INVALID_CONFIG', message: /^no --cluster-store \(or KVNET_CLUSTER_STORE\)/ });
  t.throws(() => resolveStoreUrl('  ', false), { message: /^no --cluster-store/ });
  t.throws(() => resolveStoreUrl('consul://a:b@c:8500/p', true), { message: /cannot be combined with --cluster-store consul:\/\/c:8500\/p$/ });
});

test('flags are validated with the flag and value in the message', (t) => {
  const base: AgentConfig = {
    storeUrl: 'local:///tmp/x.db', storeOpts: [], advertise: 'eth0', nodeName: 'h1', stateDir: '/tmp/s', socketPath: '/tmp/s.sock',
    metricsAddr: 'off', ttlS: 10, namePrefix: 'kvnet', gatewayBridge: 'kvnet_gwbridge',
  };
  t.notThrows(() => validateConfig(base));
  t.throws(() => validateConfig({ ...base, namePrefix: 'KV' }), { message: /invalid --name-prefix "KV"/ });
  t.throws(() => validateConfig({ ...base, namePrefix: 'toolong7' }), { message: /--name-prefix/ });
  t.throws(() => validateConfig({ ...base, nodeName: 'a b' }), { message: /invalid --node-name "a b"/ });
  t.throws(() => validateConfig({ ...base, gatewayBridge: 'a-very-long-bridge-name' }), { message: /--gateway-bridge/ });
  t.throws(() => validateConfig({ ...base, socketPath: 'rel.sock' }), { message: /--socket/ });
  t.throws(() => parseListenAddress('9473'), { message: /--metrics-addr "9473"/ });
  t.deepEqual(parseListenAddress('127.0.0.1:9473'), { host: '127.0.0.1', port: 9473 });
});

test('egress addresses: lowest free host address, skipping gateway and used ones', (t) => {
  t.is(lowestFreeAddress('172.18.0.0/16', '172.18.0.1', new Set()), '172.18.0.2/16');
  t.is(lowestFreeAddress('172.18.0.0/16', '172.18.0.1', new Set(['172.18.0.2', '172.18.0.3'])), '172.18.0.4/16');
  t.is(lowestFreeAddress('10.0.0.0/30', '10.0.0.1', new Set(['10.0.0.2'])), undefined);
});

test('names flags: --dns-address ip|off, --dns-upstream, --dns-socket, --dns-resolver-unit; the resolver socket beside --socket', async (t) => {
  const { resolverSocketFor } = await import('../src/config.ts');
  const { resolverCommandFor } = await import('../src/names/face.ts');
  const base: AgentConfig = {
    storeUrl: 'local:///tmp/x.db', storeOpts: [], advertise: 'eth0', nodeName: 'h1', stateDir: '/tmp/s', socketPath: '/run/kvnet/kvnet.sock',
    metricsAddr: 'off', ttlS: 10, namePrefix: 'kvnet', gatewayBridge: 'kvnet_gwbridge',
  };
  t.notThrows(() => validateConfig({ ...base, dnsAddress: 'off' }));
  t.notThrows(() => validateConfig({ ...base, dnsAddress: '169.254.53.53', dnsUpstreams: ['198.18.0.53', '198.18.0.53:5353', '[2001:db8::1]:53'], dnsResolverUnit: 'kvnet-resolver' }));
  t.throws(() => validateConfig({ ...base, dnsAddress: '224.0.0.1' }), { message: /invalid --dns-address "224\.0\.0\.1": must be a unicast IPv4 address/ });
  t.throws(() => validateConfig({ ...base, dnsAddress: 'resolver' }), { message: /--dns-address "resolver"/ });
  t.throws(() => validateConfig({ ...base, dnsUpstreams: ['dns.example'] }), { message: /invalid --dns-upstream "dns\.example"/ });
  t.throws(() => validateConfig({ ...base, dnsSocket: 'relative.sock' }), { message: /--dns-socket "relative\.sock": must be an absolute path/ });
  t.throws(() => validateConfig({ ...base, dnsResolverUnit: 'bad unit' }), { message: /--dns-resolver-unit "bad unit"/ });
  t.is(resolverSocketFor('/run/kvnet/kvnet.sock'), '/run/kvnet/kvnet-resolver.sock');
  t.is(resolverSocketFor('/tmp/x/h2.sock'), '/tmp/x/h2-resolver.sock', 'agents of simulated hosts sharing a directory get one each');
  t.deepEqual(resolverCommandFor(undefined, ['node', 'r.mjs']), ['node', 'r.mjs']);
  t.deepEqual(resolverCommandFor('kvnet-resolver', ['node', 'r.mjs']).slice(0, 3), ['systemd-run', '--unit=kvnet-resolver', '--collect']);
});
