import test from 'ava';
import {
  decodeMessage,
  DnsFormatError,
  encodeBareReply,
  encodeName,
  encodeQuery,
  encodeReply,
  ipv6Bytes,
  ipv6Text,
  parseQuery,
  QTYPE,
  RCODE,
  readName,
} from '../../src/names/dns-codec.ts';

test('a query round-trips: header, one question, name lower-cased, question bytes kept as sent', (t) => {
  const q = parseQuery(encodeQuery(0x1234, 'Web.Multi', QTYPE.A));
  t.is(q.header.id, 0x1234);
  t.true(q.header.rd);
  t.false(q.header.qr);
  t.is(q.header.opcode, 0);
  t.deepEqual(q.question, { name: 'web.multi', type: QTYPE.A, class: 1 });
  t.is(q.questionBytes.subarray(1, 4).toString(), 'Web');
});

test('replies echo the question and carry A, AAAA and PTR answers that decode back', (t) => {
  const q = parseQuery(encodeQuery(7, 'c1', QTYPE.A));
  const bytes = encodeReply(q, {
    rcode: RCODE.NOERROR,
    aa: true,
    ra: true,
    maxBytes: 512,
    answers: [
      { type: QTYPE.A, ttl: 0, data: '10.0.1.2' },
      { type: QTYPE.AAAA, ttl: 5, data: 'fd00::2' },
      { type: QTYPE.PTR, ttl: 0, data: 'c1.multi.' },
    ],
  });
  const m = decodeMessage(bytes);
  t.is(m.header.id, 7);
  t.true(m.header.qr);
  t.true(m.header.aa);
  t.true(m.header.ra);
  t.true(m.header.rd);
  t.is(m.header.rcode, RCODE.NOERROR);
  t.deepEqual(m.question, { name: 'c1', type: QTYPE.A, class: 1 });
  t.deepEqual(m.answers, [
    { name: 'c1', type: QTYPE.A, ttl: 0, data: '10.0.1.2' },
    { name: 'c1', type: QTYPE.AAAA, ttl: 5, data: 'fd00::2' },
    { name: 'c1', type: QTYPE.PTR, ttl: 0, data: 'c1.multi' },
  ]);
});

test('answers beyond the size limit are dropped and TC is set', (t) => {
  const q = parseQuery(encodeQuery(1, 'many', QTYPE.A));
  const answers = Array.from({ length: 100 }, (_, i) => ({ type: QTYPE.A, ttl: 0, data: `10.0.${i >> 8}.${i & 255}` }));
  const udp = decodeMessage(encodeReply(q, { rcode: 0, answers, maxBytes: 512 }));
  t.true(udp.header.tc);
  t.true(udp.answers.length > 0 && udp.answers.length < 100);
  t.true(encodeReply(q, { rcode: 0, answers, maxBytes: 512 }).length <= 512);
  const tcp = decodeMessage(encodeReply(q, { rcode: 0, answers, maxBytes: 65535 }));
  t.false(tcp.header.tc);
  t.is(tcp.answers.length, 100);
});

test('a bare reply keeps id, opcode and RD and has no sections', (t) => {
  const r = decodeMessage(encodeBareReply({ id: 99, opcode: 2, rd: true }, RCODE.NOTIMP));
  t.is(r.header.id, 99);
  t.is(r.header.opcode, 2);
  t.true(r.header.rd);
  t.true(r.header.qr);
  t.is(r.header.rcode, RCODE.NOTIMP);
  t.is(r.header.qdcount + r.header.ancount, 0);
});

function withPointer(target: number): Buffer {
  // header, then a question whose name is a pointer to `target`
  const head = Buffer.from(encodeQuery(1, 'x', QTYPE.A).subarray(0, 12));
  return Buffer.concat([head, Buffer.from([0xc0 | (target >> 8), target & 0xff, 0, 1, 0, 1])]);
}

test('compression: a backward pointer is followed; a self or forward pointer is refused (no loops)', (t) => {
  // "a" at 12, then a name at 15 = label "b" + pointer to 12 → "b.a"
  const buf = Buffer.concat([Buffer.alloc(12), Buffer.from([1, 0x61, 0]), Buffer.from([1, 0x62, 0xc0, 12])]);
  t.deepEqual(readName(buf, 15), { name: 'b.a', end: 19 });
  t.throws(() => parseQuery(withPointer(12)), { instanceOf: DnsFormatError, message: /points forward/ });
  t.throws(() => parseQuery(withPointer(200)), { instanceOf: DnsFormatError });
  // two pointers pointing at each other: the second points forward
  const loop = Buffer.concat([Buffer.alloc(12), Buffer.from([0xc0, 14, 0xc0, 12])]);
  t.throws(() => readName(loop, 12), { instanceOf: DnsFormatError });
});

test('truncated queries are refused at every length', (t) => {
  const full = encodeQuery(5, 'some.name.example', QTYPE.AAAA);
  for (let n = 0; n < full.length; n++) t.throws(() => parseQuery(full.subarray(0, n)), { instanceOf: DnsFormatError }, `length ${n}`);
  t.notThrows(() => parseQuery(full));
});

test('names over 255 bytes, reserved label types and question counts other than 1 are refused', (t) => {
  const long = Buffer.concat([Buffer.alloc(12), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]);
  long.writeUInt16BE(1, 4);
  t.throws(() => parseQuery(long), { message: /longer than 255/ });
  const reserved = Buffer.concat([Buffer.alloc(12), Buffer.from([0x40, 0, 0, 1, 0, 1])]);
  reserved.writeUInt16BE(1, 4);
  t.throws(() => parseQuery(reserved), { message: /label type/ });
  const two = encodeQuery(1, 'a', QTYPE.A);
  two.writeUInt16BE(2, 4);
  t.throws(() => parseQuery(two), { message: /2 questions/ });
  const none = encodeQuery(1, 'a', QTYPE.A);
  none.writeUInt16BE(0, 4);
  t.throws(() => parseQuery(none), { message: /0 questions/ });
});

test('label bytes that are dots or not printable come out escaped, so they match no plain name', (t) => {
  const buf = Buffer.concat([Buffer.alloc(12), Buffer.from([3, 0x61, 0x2e, 0x62, 2, 0x00, 0x5c, 0]), Buffer.from([0, 1, 0, 1])]);
  buf.writeUInt16BE(1, 4);
  t.is(parseQuery(buf).question.name, 'a\\046b.\\000\\092');
});

test('encodeName refuses empty and over-long labels and names', (t) => {
  t.throws(() => encodeName('a..b'), { instanceOf: DnsFormatError });
  t.throws(() => encodeName('x'.repeat(64)), { instanceOf: DnsFormatError });
  t.throws(() => encodeName(Array.from({ length: 50 }, () => 'abcde').join('.')), { instanceOf: DnsFormatError });
  t.deepEqual([...encodeName('.')], [0]);
});

test('IPv6 text ↔ bytes, including :: and a trailing dotted quad', (t) => {
  t.is(ipv6Text(ipv6Bytes('fd00:0:0:0:0:0:0:2')), 'fd00::2');
  t.is(ipv6Text(ipv6Bytes('::')), '::');
  t.is(ipv6Text(ipv6Bytes('::ffff:10.0.0.1')), '::ffff:a00:1');
  t.is(ipv6Text(ipv6Bytes('2001:DB8:0:1:1:1:1:1')), '2001:db8:0:1:1:1:1:1');
  t.is(ipv6Text(ipv6Bytes('1:0:0:2:0:0:0:3')), '1:0:0:2::3');
  for (const bad of ['1::2::3', '12345::', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', 'fd00::x', '10.0.0.1', '1:2:3:4:5:6:7::8']) {
    t.throws(() => ipv6Bytes(bad), { instanceOf: DnsFormatError }, bad);
  }
});
