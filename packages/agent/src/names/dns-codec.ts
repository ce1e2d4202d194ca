/**
 * The DNS wire format (RFC 1035 §4), only as much as the responder needs: read a query's header and
 * its one question, and write answers (A, AAAA, PTR) or a bare error reply. Pure functions over
 * Buffers; every read is bounds-checked, so a hostile packet ends in {@link DnsFormatError}, never in
 * an exception from Buffer or an endless loop.
 *
 * Names come back in presentation form, lower-cased: labels joined with `.`; a label byte that is a
 * `.`, a `\` or not printable ASCII is written `\DDD` (RFC 1035 §5.1), so `a.b` as one label can never
 * equal the two labels `a` and `b`, and such a name simply matches no kvnet record.
 */

/** Header length. */
export const HEADER_BYTES = 12;
/** Longest name on the wire, length bytes included (RFC 1035 §2.3.4). */
export const MAX_NAME_WIRE_BYTES = 255;
export const MAX_LABEL_BYTES = 63;
/**
 * Compression pointers followed while reading one name. Pointers must also point strictly backwards
 * (to an earlier offset than the pointer itself), which alone rules out loops; the cap is a second bound.
 */
export const MAX_POINTER_HOPS = 127;
/** Largest reply over UDP without EDNS (RFC 1035 §4.2.1); the responder never echoes OPT, so this is its UDP limit. */
export const MAX_UDP_REPLY_BYTES = 512;
/** Largest DNS message at all (TCP's 2-byte length). */
export const MAX_MESSAGE_BYTES = 65_535;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export const QTYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 } as const;
export const QCLASS_IN = 1;
/** Standard query. Every other opcode (IQUERY, STATUS, NOTIFY, UPDATE, …) is answered NOTIMP. */
export const OPCODE_QUERY = 0;

/** A packet (or a name to encode) that is not well-formed DNS. */
export class DnsFormatError extends Error {
  readonly code = 'KVNET_DNS_FORMAT';
  constructor(message: string) {
    super(message);
    this.name = 'DnsFormatError';
  }
}

export interface DnsHeader {
  readonly id: number;
  /** True for a response. */
  readonly qr: boolean;
  readonly opcode: number;
  readonly aa: boolean;
  readonly tc: boolean;
  readonly rd: boolean;
  readonly ra: boolean;
  readonly rcode: number;
  readonly qdcount: number;
  readonly ancount: number;
  readonly nscount: number;
  readonly arcount: number;
}

export interface DnsQuestion {
  /** Presentation form, lower-cased, without the trailing dot; `''` for the root. */
  readonly name: string;
  readonly type: number;
  readonly class: number;
}

/** A query with exactly one question. */
export interface DnsQuery {
  readonly header: DnsHeader;
  readonly question: DnsQuestion;
  /** The question section exactly as received (case preserved), copied into replies. */
  readonly questionBytes: Buffer;
}

/** One answer record; its owner is always the question's name. */
export interface DnsAnswer {
  readonly type: typeof QTYPE.A | typeof QTYPE.AAAA | typeof QTYPE.PTR;
  /** Seconds. */
  readonly ttl: number;
  /** A: dotted quad; AAAA: any IPv6 text form; PTR: a name (trailing dot optional). */
  readonly data: string;
}

/** The header, or undefined when the packet is shorter than one. */
export function readHeader(buf: Buffer): DnsHeader | undefined {
  if (buf.length < HEADER_BYTES) return undefined;
  const flags = buf.readUInt16BE(2);
  return {
    id: buf.readUInt16BE(0),
    qr: (flags & 0x8000) !== 0,
    opcode: (flags >> 11) & 0xf,
    aa: (flags & 0x0400) !== 0,
    tc: (flags & 0x0200) !== 0,
    rd: (flags & 0x0100) !== 0,
    ra: (flags & 0x0080) !== 0,
    rcode: flags & 0xf,
    qdcount: buf.readUInt16BE(4),
    ancount: buf.readUInt16BE(6),
    nscount: buf.readUInt16BE(8),
    arcount: buf.readUInt16BE(10),
  };
}

/**
 * Reads the name at `offset`, following compression pointers. `end` is the offset just after the name
 * where it starts (after the first pointer, if any). Throws {@link DnsFormatError} on truncation, a
 * pointer that does not point backwards, too many hops, a reserved label type, or a name over 255 bytes.
 */
export function readName(buf: Buffer, offset: number): { name: string; end: number } {
  const labels: string[] = [];
  let pos = offset;
  let end = -1;
  let wireBytes = 1; // the final zero byte
  let hops = 0;
  for (;;) {
    if (pos >= buf.length) throw new DnsFormatError(`name at offset ${offset} runs past the end of the packet`);
    const len = buf[pos]!;
    if (len === 0) {
      if (end < 0) end = pos + 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) throw new DnsFormatError(`compression pointer at offset ${pos} is truncated`);
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      if (target >= pos) throw new DnsFormatError(`compression pointer at offset ${pos} points forward to ${target}`);
      if (++hops > MAX_POINTER_HOPS) throw new DnsFormatError(`name at offset ${offset} follows more than ${MAX_POINTER_HOPS} compression pointers`);
      if (end < 0) end = pos + 2;
      pos = target;
      continue;
    }
    if (kind !== 0) throw new DnsFormatError(`label type 0x${kind.toString(16)} at offset ${pos} is not supported`);
    if (pos + 1 + len > buf.length) throw new DnsFormatError(`label at offset ${pos} runs past the end of the packet`);
    wireBytes += len + 1;
    if (wireBytes > MAX_NAME_WIRE_BYTES) throw new DnsFormatError(`name at offset ${offset} is longer than ${MAX_NAME_WIRE_BYTES} bytes`);
    labels.push(labelText(buf, pos + 1, len));
    pos += 1 + len;
  }
  return { name: labels.join('.'), end };
}

function labelText(buf: Buffer, start: number, len: number): string {
  let s = '';
  for (let i = start; i < start + len; i++) {
    let c = buf[i]!;
    if (c >= 0x41 && c <= 0x5a) c += 0x20; // ASCII lower-case; DNS names compare case-insensitively
    if (c <= 0x20 || c >= 0x7f || c === 0x2e || c === 0x5c) s += `\\${c.toString().padStart(3, '0')}`;
    else s += String.fromCharCode(c);
  }
  return s;
}

/**
 * Parses a query: a header, then exactly `qdcount` = 1 question. Sections after the question are not
 * read (the responder answers from the question alone and forwards the packet unchanged).
 * Throws {@link DnsFormatError}.
 */
export function parseQuery(buf: Buffer): DnsQuery {
  const header = readHeader(buf);
  if (!header) throw new DnsFormatError(`packet of ${buf.length} bytes is shorter than a DNS header`);
  if (header.qdcount !== 1) throw new DnsFormatError(`query has ${header.qdcount} questions, not 1`);
  const { name, end } = readName(buf, HEADER_BYTES);
  if (end + 4 > buf.length) throw new DnsFormatError('question is truncated before its type and class');
  return {
    header,
    question: { name, type: buf.readUInt16BE(end), class: buf.readUInt16BE(end + 2) },
    questionBytes: Buffer.from(buf.subarray(HEADER_BYTES, end + 4)),
  };
}

function flagsOf(h: { opcode: number; aa?: boolean; tc?: boolean; rd: boolean; ra?: boolean; rcode: number }): number {
  return 0x8000 | ((h.opcode & 0xf) << 11) | (h.aa ? 0x0400 : 0) | (h.tc ? 0x0200 : 0) | (h.rd ? 0x0100 : 0) | (h.ra ? 0x0080 : 0) | (h.rcode & 0xf);
}

/**
 * A reply with no sections, for a packet whose question cannot be (or need not be) echoed: FORMERR,
 * NOTIMP. Keeps the id, opcode and RD bit of the request.
 */
export function encodeBareReply(request: Pick<DnsHeader, 'id' | 'opcode' | 'rd'>, rcode: number): Buffer {
  const out = Buffer.alloc(HEADER_BYTES);
  out.writeUInt16BE(request.id, 0);
  out.writeUInt16BE(flagsOf({ opcode: request.opcode, rd: request.rd, rcode }), 2);
  return out;
}

export interface ReplyOptions {
  readonly rcode: number;
  /** Authoritative answer: set for kvnet's own records. */
  readonly aa?: boolean;
  /** Recursion available: set when the asker may have names forwarded upstream. */
  readonly ra?: boolean;
  readonly answers?: readonly DnsAnswer[];
  /** Answers that do not fit are dropped and TC is set (the client retries over TCP). */
  readonly maxBytes: number;
}

/**
 * A reply to `query`: its question echoed as received, then the answers, each owned by the question's
 * name (a compression pointer to offset 12).
 */
export function encodeReply(query: DnsQuery, options: ReplyOptions): Buffer {
  const head = Buffer.alloc(HEADER_BYTES);
  const parts: Buffer[] = [head, query.questionBytes];
  let size = HEADER_BYTES + query.questionBytes.length;
  let count = 0;
  let truncated = false;
  for (const a of options.answers ?? []) {
    const rr = encodeAnswer(a);
    if (size + rr.length > options.maxBytes) {
      truncated = true;
      break;
    }
    parts.push(rr);
    size += rr.length;
    count++;
  }
  head.writeUInt16BE(query.header.id, 0);
  head.writeUInt16BE(flagsOf({ opcode: query.header.opcode, aa: options.aa, tc: truncated, rd: query.header.rd, ra: options.ra, rcode: options.rcode }), 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(count, 6);
  return Buffer.concat(parts, size);
}

function encodeAnswer(a: DnsAnswer): Buffer {
  const rdata = a.type === QTYPE.A ? ipv4Bytes(a.data) : a.type === QTYPE.AAAA ? ipv6Bytes(a.data) : encodeName(a.data);
  const rr = Buffer.alloc(12 + rdata.length);
  rr.writeUInt16BE(0xc000 | HEADER_BYTES, 0);
  rr.writeUInt16BE(a.type, 2);
  rr.writeUInt16BE(QCLASS_IN, 4);
  rr.writeUInt32BE(a.ttl >>> 0, 6);
  rr.writeUInt16BE(rdata.length, 10);
  rdata.copy(rr, 12);
  return rr;
}

/** Wire form of a name given in presentation form (`a.b.c` or `a.b.c.`), without compression. */
export function encodeName(name: string): Buffer {
  const trimmed = name.endsWith('.') ? name.slice(0, -1) : name;
  const labels = trimmed === '' ? [] : trimmed.split('.');
  const parts: Buffer[] = [];
  let total = 1;
  for (const label of labels) {
    const bytes = Buffer.from(label, 'utf8');
    if (bytes.length === 0 || bytes.length > MAX_LABEL_BYTES) throw new DnsFormatError(`label ${JSON.stringify(label)} of ${JSON.stringify(name)} must be 1…${MAX_LABEL_BYTES} bytes`);
    parts.push(Buffer.from([bytes.length]), bytes);
    total += bytes.length + 1;
  }
  if (total > MAX_NAME_WIRE_BYTES) throw new DnsFormatError(`name ${JSON.stringify(name)} is longer than ${MAX_NAME_WIRE_BYTES} bytes`);
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

/** A query for `name`/`type` (tests, the benchmark's client, health probes). */
export function encodeQuery(id: number, name: string, type: number, options: { rd?: boolean } = {}): Buffer {
  const head = Buffer.alloc(HEADER_BYTES);
  head.writeUInt16BE(id & 0xffff, 0);
  head.writeUInt16BE(options.rd === false ? 0 : 0x0100, 2);
  head.writeUInt16BE(1, 4);
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(type, 0);
  tail.writeUInt16BE(QCLASS_IN, 2);
  return Buffer.concat([head, encodeName(name), tail]);
}

export interface DecodedRecord {
  readonly name: string;
  readonly type: number;
  readonly ttl: number;
  /** A/AAAA: the address; PTR/CNAME/NS: the name; anything else: rdata as hex. */
  readonly data: string;
}

/** A whole message read back (tests and clients): header, question, answer records. Throws {@link DnsFormatError}. */
export function decodeMessage(buf: Buffer): { header: DnsHeader; question?: DnsQuestion; answers: DecodedRecord[] } {
  const header = readHeader(buf);
  if (!header) throw new DnsFormatError(`message of ${buf.length} bytes is shorter than a DNS header`);
  let pos = HEADER_BYTES;
  let question: DnsQuestion | undefined;
  for (let i = 0; i < header.qdcount; i++) {
    const { name, end } = readName(buf, pos);
    if (end + 4 > buf.length) throw new DnsFormatError('question is truncated');
    if (i === 0) question = { name, type: buf.readUInt16BE(end), class: buf.readUInt16BE(end + 2) };
    pos = end + 4;
  }
  const answers: DecodedRecord[] = [];
  for (let i = 0; i < header.ancount; i++) {
    const { name, end } = readName(buf, pos);
    if (end + 10 > buf.length) throw new DnsFormatError('answer record is truncated');
    const type = buf.readUInt16BE(end);
    const ttl = buf.readUInt32BE(end + 4);
    const rdlen = buf.readUInt16BE(end + 8);
    const rstart = end + 10;
    if (rstart + rdlen > buf.length) throw new DnsFormatError('answer data is truncated');
    let data: string;
    if (type === QTYPE.A && rdlen === 4) data = [...buf.subarray(rstart, rstart + 4)].join('.');
    else if (type === QTYPE.AAAA && rdlen === 16) data = ipv6Text(buf.subarray(rstart, rstart + 16));
    else if (type === QTYPE.PTR || type === QTYPE.CNAME || type === QTYPE.NS) data = readName(buf, rstart).name;
    else data = buf.subarray(rstart, rstart + rdlen).toString('hex');
    answers.push({ name, type, ttl, data });
    pos = rstart + rdlen;
  }
  return { header, ...(question ? { question } : {}), answers };
}

/** Four bytes of a dotted quad; throws on anything else. */
export function ipv4Bytes(ip: string): Buffer {
  const parts = ip.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw new DnsFormatError(`${JSON.stringify(ip)} is not an IPv4 address`);
  return Buffer.from(parts.map(Number));
}

/** Sixteen bytes of an IPv6 address in any text form (`::` and a trailing dotted quad included); throws on anything else. */
export function ipv6Bytes(ip: string): Buffer {
  const bad = (): never => {
    throw new DnsFormatError(`${JSON.stringify(ip)} is not an IPv6 address`);
  };
  let text = ip;
  const lastColon = text.lastIndexOf(':');
  if (lastColon < 0) bad();
  if (text.slice(lastColon + 1).includes('.')) {
    // A trailing dotted quad (`::ffff:1.2.3.4`) is two more groups.
    const q = ipv4Bytes(text.slice(lastColon + 1));
    text = `${text.slice(0, lastColon + 1)}${((q[0]! << 8) | q[1]!).toString(16)}:${((q[2]! << 8) | q[3]!).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) bad();
  const group = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => (/^[0-9a-fA-F]{1,4}$/.test(g) ? parseInt(g, 16) : bad())));
  const head = group(halves[0]!);
  const rest = halves.length === 2 ? group(halves[1]!) : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) bad();
  const groups = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...rest];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

/** Canonical text of 16 address bytes (RFC 5952: lower-case, longest zero run as `::`). */
export function ipv6Text(bytes: Buffer): string {
  const groups = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}
