import test from 'ava';
import { decodeSegment, encodeSegment, isUnder, parseStoreUrl, validateKey, validateStartsWith } from '../src/index.ts';

test('validateKey accepts normal keys and refuses malformed ones', (t) => {
  for (const ok of ['a', 'a/b', 'networks/4f1c:x@y=z,w+v~u-t_s.r']) t.notThrows(() => validateKey(ok));
  for (const bad of ['', '/a', 'a/', 'a//b', '.', 'a/..', 'a\0', 'a b', 'ä']) {
    t.throws(() => validateKey(bad), { code: 'KVNET_STORE_INVALID_KEY' } as never, JSON.stringify(bad));
  }
  t.throws(() => validateKey('x'.repeat(256)), { message: /longer than 255 bytes/ });
});

test('isUnder matches whole segments only', (t) => {
  t.true(isUnder('net/a', 'net/a/x'));
  t.false(isUnder('net/a', 'net/ab'));
  t.false(isUnder('net/a', 'net/a'));
  t.true(isUnder('', 'anything'));
});

test('validateStartsWith accepts the start of a segment and refuses anything else, naming the value', (t) => {
  for (const ok of [undefined, 'a', '0', '.', '..', '~', 'ab:c@d=e,f+g-h_i', 'x'.repeat(255)]) t.notThrows(() => validateStartsWith(ok), String(ok));
  for (const bad of ['', 'a/b', '/', 'a b', 'a\0', 'ä', 'x'.repeat(256)]) {
    const err = t.throws(() => validateStartsWith(bad), { code: 'KVNET_STORE_INVALID_KEY' } as never, JSON.stringify(bad));
    t.true(err!.message.includes(JSON.stringify(bad)), err!.message);
  }
  t.throws(() => validateStartsWith(null as unknown as string), { code: 'KVNET_STORE_INVALID_KEY' } as never);
});

test('isUnder with startsWith: below the prefix and starting with it there', (t) => {
  for (const key of ['net/a/x', 'net/a/xy', 'net/a/x/deeper']) t.true(isUnder('net/a', key, 'x'), key);
  for (const key of ['net/a/y', 'net/ax', 'net/a', 'net/ax/1', 'net/b/x']) t.false(isUnder('net/a', key, 'x'), key);
  t.true(isUnder('', 'xtop', 'x'));
  t.true(isUnder('', 'x/1', 'x'));
  t.false(isUnder('', 'net/x', 'x'));
});

test('encodeSegment round-trips arbitrary text into a valid segment', (t) => {
  for (const s of ['', '.', '..', 'fe80::1/64', 'my net', 'ä~%/', 'plain-name_1.2']) {
    const enc = encodeSegment(s);
    t.notThrows(() => validateKey(enc), `${JSON.stringify(s)} -> ${enc}`);
    t.is(decodeSegment(enc), s);
  }
  t.is(encodeSegment('plain-name_1.2'), 'plain-name_1.2');
});

test('store URLs parse into backend, hosts and prefix; credentials are redacted', (t) => {
  const a = parseStoreUrl('consul://h1:8500,h2/my/prefix');
  t.is(a.backend, 'consul');
  t.deepEqual(a.hosts, [
    { host: 'h1', port: 8500 },
    { host: 'h2', port: 8500 },
  ]);
  t.is(a.prefix, 'my/prefix');
  const b = parseStoreUrl('etcd://user:secret@[::1]:2379');
  t.is(b.prefix, 'kvnet');
  t.is(b.username, 'user');
  t.is(b.password, 'secret');
  t.false(b.redacted.includes('secret'));
  t.is(parseStoreUrl('zk://10.0.0.1').hosts[0]!.port, 2181);
  t.is(parseStoreUrl('local:///var/lib/kvnet/s.db').path, '/var/lib/kvnet/s.db');
  t.throws(() => parseStoreUrl('redis://x'), { message: /unknown backend "redis"/ });
  t.throws(() => parseStoreUrl('etcd://h:99999/p'), { message: /bad port "99999"/ });
  t.throws(() => parseStoreUrl('etcd://h/a//b'), { message: /bad prefix/ });
  t.throws(() => parseStoreUrl('local://relative/path'), { message: /absolute file path/ });
  t.throws(() => parseStoreUrl('10.0.0.1:2379'), { message: /expected SCHEME/ });
});
