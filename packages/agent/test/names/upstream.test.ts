/**
 * Upstream selection and forwarding, against small DNS servers on loopback (real UDP and TCP sockets).
 */

import test from 'ava';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { writeFileSync, utimesSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { InvalidConfigError } from '../../src/errors.ts';
import { decodeMessage, encodeQuery, encodeReply, parseQuery, QTYPE, RCODE } from '../../src/names/dns-codec.ts';
import { checkSettings } from '../../src/names/settings.ts';
import { Forwarder, parseResolvConf, parseUpstream, UpstreamList, type UpstreamServer } from '../../src/names/upstream.ts';
import { makeTempDir } from '../../../../test/support/process.ts';

test('parseUpstream: ip, ip:port, [v6]:port; bad ones name the value', (t) => {
  t.deepEqual(parseUpstream('10.0.0.53'), { host: '10.0.0.53', port: 53 });
  t.deepEqual(parseUpstream('10.0.0.53:5353'), { host: '10.0.0.53', port: 5353 });
  t.deepEqual(parseUpstream('fd00::53'), { host: 'fd00::53', port: 53 });
  t.deepEqual(parseUpstream('[fd00::53]:5300'), { host: 'fd00::53', port: 5300 });
  t.throws(() => parseUpstream('dns.example.com'), { instanceOf: InvalidConfigError, message: /"dns\.example\.com" is not an IP address/ });
  t.throws(() => parseUpstream('10.0.0.53:99999'), { instanceOf: InvalidConfigError, message: /outside 1…65535/ });
  t.throws(() => parseUpstream('10.0.0.53:x'), { instanceOf: InvalidConfigError, message: /not a number/ });
});

test('checkSettings fills defaults and names a bad address or upstream', (t) => {
  t.deepEqual(checkSettings({}), { address: '169.254.53.53', upstreams: [], resolvConf: '/etc/resolv.conf', hostListener: false });
  t.throws(() => checkSettings({ address: '169.254.53' }), { instanceOf: InvalidConfigError, message: /"169\.254\.53" is not a unicast IPv4 address/ });
  t.throws(() => checkSettings({ address: '224.0.0.53' }), { instanceOf: InvalidConfigError });
  t.throws(() => checkSettings({ upstreams: ['1.1.1.1', 'nope'] }), { instanceOf: InvalidConfigError, message: /"nope"/ });
  t.throws(() => checkSettings({ resolvConf: 'resolv.conf' }), { instanceOf: InvalidConfigError, message: /not absolute/ });
});

test('parseResolvConf takes nameserver lines in order, drops comments and IPv6 zones', (t) => {
  t.deepEqual(parseResolvConf('# hi\nsearch example\nnameserver 10.0.0.2\nnameserver   fe80::1%eth0 ; zone\noptions ndots:2\nnameserver bogus\nnameserver 10.0.0.3'), ['10.0.0.2', 'fe80::1', '10.0.0.3']);
});

test('UpstreamList: configured servers win; resolv.conf is re-read when it changes; the resolver\'s own address is skipped', (t) => {
  const file = join(makeTempDir('names-up'), 'resolv.conf');
  writeFileSync(file, 'nameserver 169.254.53.53\nnameserver 10.0.0.2\n');
  const list = new UpstreamList([], file, '169.254.53.53');
  t.deepEqual(list.servers(), [{ host: '10.0.0.2', port: 53 }]);
  writeFileSync(file, 'nameserver 10.0.0.9\n');
  utimesSync(file, new Date(), new Date(Date.now() + 5000));
  t.deepEqual(list.servers(), [{ host: '10.0.0.9', port: 53 }]);
  t.deepEqual(new UpstreamList([{ host: '10.1.1.1', port: 53 }, { host: '169.254.53.53', port: 53 }], file, '169.254.53.53').servers(), [{ host: '10.1.1.1', port: 53 }]);
  t.deepEqual(new UpstreamList([], '/nonexistent/resolv.conf', 'x').servers(), []);
});

type Behaviour = 'answer' | 'servfail' | 'silent' | 'wrong-id-then-answer' | 'truncate';

interface FakeUpstream {
  server: UpstreamServer;
  seen: Array<{ id: number; transport: string }>;
  close(): Promise<void>;
}

/** A DNS server on 127.0.0.1 (UDP and TCP on one port) that behaves as told. */
async function upstream(behaviour: Behaviour): Promise<FakeUpstream> {
  const seen: Array<{ id: number; transport: string }> = [];
  const reply = (packet: Buffer, transport: string): Buffer | undefined => {
    const q = parseQuery(packet);
    seen.push({ id: q.header.id, transport });
    if (behaviour === 'silent') return undefined;
    if (behaviour === 'servfail') return encodeReply(q, { rcode: RCODE.SERVFAIL, maxBytes: 512 });
    const answers = Array.from({ length: behaviour === 'truncate' ? 50 : 1 }, (_, i) => ({ type: QTYPE.A, ttl: 9, data: `192.0.2.${i + 1}` }));
    return encodeReply(q, { rcode: 0, answers, maxBytes: transport === 'udp' ? 512 : 65535 });
  };
  const tcp: Server = createServer((s) => {
    s.on('data', (d: Buffer) => {
      const r = reply(d.subarray(2), 'tcp');
      if (r) s.write(Buffer.concat([Buffer.from([r.length >> 8, r.length & 255]), r]));
    });
  });
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const port = (tcp.address() as AddressInfo).port;
  const udp: UdpSocket = createSocket('udp4');
  udp.on('message', (msg, rinfo) => {
    const r = reply(msg, 'udp');
    if (!r) return;
    if (behaviour === 'wrong-id-then-answer') {
      const spoof = Buffer.from(r);
      spoof.writeUInt16BE((r.readUInt16BE(0) + 1) & 0xffff, 0);
      spoof.writeUInt16BE(0x8180 | RCODE.NXDOMAIN, 2);
      udp.send(spoof, rinfo.port, rinfo.address);
    }
    udp.send(r, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => udp.bind(port, '127.0.0.1', resolve));
  return {
    server: { host: '127.0.0.1', port },
    seen,
    close: async () => {
      udp.close();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    },
  };
}

test('a forwarded query goes out with a fresh id and comes back with the client\'s', async (t) => {
  const up = await upstream('answer');
  const f = new Forwarder({ upstreams: () => [up.server] });
  const out = await f.forward(encodeQuery(0x1111, 'example.org', QTYPE.A), 'udp');
  t.is(out.kind, 'answer');
  const m = decodeMessage((out as { reply: Buffer }).reply);
  t.is(m.header.id, 0x1111);
  t.deepEqual(m.answers.map((a) => a.data), ['192.0.2.1']);
  t.is(up.seen.length, 1);
  await up.close();
});

test('SERVFAIL and silence move on to the next server; all failing is reported as failed', async (t) => {
  const bad = await upstream('servfail');
  const mute = await upstream('silent');
  const good = await upstream('answer');
  const f = new Forwarder({ upstreams: () => [bad.server, mute.server, good.server], timeoutMs: 300 });
  const out = await f.forward(encodeQuery(7, 'example.org', QTYPE.A), 'udp');
  t.is(out.kind, 'answer');
  t.is(decodeMessage((out as { reply: Buffer }).reply).header.rcode, RCODE.NOERROR);
  t.deepEqual([bad.seen.length, mute.seen.length, good.seen.length], [1, 1, 1]);
  const none = new Forwarder({ upstreams: () => [mute.server], timeoutMs: 200 });
  t.deepEqual(await none.forward(encodeQuery(8, 'example.org', QTYPE.A), 'udp'), { kind: 'failed' });
  // only SERVFAIL anywhere: that answer is returned, not a made-up one
  const onlyBad = new Forwarder({ upstreams: () => [bad.server] });
  const sf = await onlyBad.forward(encodeQuery(9, 'example.org', QTYPE.A), 'udp');
  t.is(decodeMessage((sf as { reply: Buffer }).reply).header.rcode, RCODE.SERVFAIL);
  t.deepEqual(await new Forwarder({ upstreams: () => [] }).forward(encodeQuery(1, 'x', 1), 'udp'), { kind: 'failed' });
  await Promise.all([bad.close(), mute.close(), good.close()]);
});

test('a reply with the wrong id is ignored; the right one is taken', async (t) => {
  const up = await upstream('wrong-id-then-answer');
  const out = await new Forwarder({ upstreams: () => [up.server] }).forward(encodeQuery(3, 'example.org', QTYPE.A), 'udp');
  t.is(decodeMessage((out as { reply: Buffer }).reply).header.rcode, RCODE.NOERROR);
  await up.close();
});

test('a truncated UDP answer is passed back; the same question over TCP gets the whole answer', async (t) => {
  const up = await upstream('truncate');
  const f = new Forwarder({ upstreams: () => [up.server] });
  const udp = decodeMessage(((await f.forward(encodeQuery(4, 'big.example', QTYPE.A), 'udp')) as { reply: Buffer }).reply);
  t.true(udp.header.tc);
  const tcp = decodeMessage(((await f.forward(encodeQuery(5, 'big.example', QTYPE.A), 'tcp')) as { reply: Buffer }).reply);
  t.false(tcp.header.tc);
  t.is(tcp.answers.length, 50);
  t.deepEqual(up.seen.map((s) => s.transport), ['udp', 'tcp']);
  await up.close();
});

test('beyond the in-flight limit a query is answered busy at once', async (t) => {
  const mute = await upstream('silent');
  const f = new Forwarder({ upstreams: () => [mute.server], timeoutMs: 500, maxInFlight: 2 });
  const pending = [f.forward(encodeQuery(1, 'a.example', 1), 'udp'), f.forward(encodeQuery(2, 'b.example', 1), 'udp')];
  t.deepEqual(await f.forward(encodeQuery(3, 'c.example', 1), 'udp'), { kind: 'busy' });
  await Promise.all(pending);
  await mute.close();
});
