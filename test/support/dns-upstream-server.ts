/**
 * A small authoritative DNS server playing "the upstream" in names tests and benchmarks
 * (`node --import tsx dns-upstream-server.ts <address> [port]`, inside a namespace made by the test).
 * Zone `up.test` only:
 * - `big.up.test` A: 60 addresses (too many for 512 bytes: truncated over UDP, whole over TCP);
 * - `nx.up.test`: NXDOMAIN;
 * - any other `<x>.up.test` A: 198.19.53.77; anything else: REFUSED.
 * Every query is logged to stdout as `Q <transport> <source> <name> <type>`, so a test can tell
 * what reached it.
 */

import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { encodeBareReply, encodeReply, parseQuery, QTYPE, RCODE, type DnsAnswer } from '../../packages/agent/src/names/dns-codec.ts';

export const UPSTREAM_ANSWER = '198.19.53.77';
export const BIG_ANSWERS = 60;

function answer(packet: Buffer, transport: 'udp' | 'tcp', source: string): Buffer | undefined {
  let q;
  try {
    q = parseQuery(packet);
  } catch {
    return packet.length >= 12 ? encodeBareReply({ id: packet.readUInt16BE(0), opcode: 0, rd: false }, RCODE.FORMERR) : undefined;
  }
  process.stdout.write(`Q ${transport} ${source} ${q.question.name} ${q.question.type}\n`);
  const maxBytes = transport === 'udp' ? 512 : 65535;
  const name = q.question.name;
  if (!name.endsWith('.up.test')) return encodeReply(q, { rcode: RCODE.REFUSED, maxBytes });
  if (name === 'nx.up.test') return encodeReply(q, { rcode: RCODE.NXDOMAIN, aa: true, maxBytes });
  if (q.question.type !== QTYPE.A) return encodeReply(q, { rcode: RCODE.NOERROR, aa: true, maxBytes });
  const answers: DnsAnswer[] =
    name === 'big.up.test'
      ? Array.from({ length: BIG_ANSWERS }, (_, i) => ({ type: QTYPE.A, ttl: 60, data: `198.19.54.${i + 1}` }))
      : [{ type: QTYPE.A, ttl: 60, data: UPSTREAM_ANSWER }];
  return encodeReply(q, { rcode: RCODE.NOERROR, aa: true, answers, maxBytes });
}

function serve(address: string, port: number): void {
  const udp = createSocket('udp4');
  udp.on('message', (msg, rinfo) => {
    const reply = answer(msg, 'udp', rinfo.address);
    if (reply) udp.send(reply, rinfo.port, rinfo.address);
  });
  udp.bind(port, address, () => {
    const tcp = createServer((sock) => {
      let buf = Buffer.alloc(0);
      sock.on('error', () => sock.destroy());
      sock.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const packet = buf.subarray(2, 2 + buf.readUInt16BE(0));
          buf = buf.subarray(2 + packet.length);
          const reply = answer(Buffer.from(packet), 'tcp', sock.remoteAddress ?? '');
          if (reply) {
            const len = Buffer.alloc(2);
            len.writeUInt16BE(reply.length, 0);
            sock.write(Buffer.concat([len, reply]));
          }
        }
      });
    });
    tcp.listen(port, address, () => process.stdout.write(`listening ${address}:${port}\n`));
  });
}

// Imported for its constants by tests: serve only when run as a program.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [address, port = '53'] = process.argv.slice(2);
  if (!address) throw new Error('usage: dns-upstream-server.ts <address> [port]');
  serve(address, Number(port));
}
