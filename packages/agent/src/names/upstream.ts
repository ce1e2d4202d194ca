/**
 * Forwarding to upstream servers: which servers (configured `ip[:port]`, or the `nameserver` lines of a
 * resolv.conf), and one query's exchange with them.
 *
 * A query is sent unchanged but for its id (a fresh random one, on a fresh socket with a random source
 * port, so an off-path answer has to guess both), to each server in order until one answers with
 * anything but SERVFAIL or REFUSED (Docker's embedded resolver does the same); the answer goes back
 * with the client's id. UDP questions go upstream over UDP and a truncated (TC) answer is passed back
 * as is, so the client retries over TCP, and a TCP question goes upstream over TCP: that is the TCP
 * fallback on truncation, end to end, without re-truncating a long TCP answer into a UDP reply.
 * Forwarding happens from the resolver process's own network namespace (the host's).
 */

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync, statSync } from 'node:fs';
import { isIPv4, isIPv6, connect, type Socket } from 'node:net';
import { randomInt } from 'node:crypto';
import { InvalidConfigError } from '../errors.ts';
import { HEADER_BYTES, MAX_MESSAGE_BYTES, readHeader, readName, RCODE } from './dns-codec.ts';

/** Per server and attempt. A client's stub resolver gives up after 5 s (glibc's default), so three servers fit. */
export const UPSTREAM_TIMEOUT_MS = 1_500;
/** Servers tried per query (Docker's embedded resolver tries 3). */
export const MAX_UPSTREAMS_TRIED = 3;
/** Forwarded queries in flight at once; beyond that a query is answered REFUSED at once (Docker: 1024). */
export const MAX_FORWARDS_IN_FLIGHT = 1_024;
export const DNS_PORT = 53;

export interface UpstreamServer {
  readonly host: string;
  readonly port: number;
}

/** `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port` → server. Throws `InvalidConfigError` naming the value. */
export function parseUpstream(spec: string): UpstreamServer {
  const bad = (why: string): never => {
    throw new InvalidConfigError(`DNS upstream ${JSON.stringify(spec)} ${why}; expected ip, ip:port or [ipv6]:port`);
  };
  let host = spec;
  let port = DNS_PORT;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(spec);
  if (bracket) {
    host = bracket[1]!;
    if (bracket[2] !== undefined) port = Number(bracket[2]);
  } else if (!isIPv6(spec) && spec.includes(':')) {
    const i = spec.lastIndexOf(':');
    host = spec.slice(0, i);
    if (!/^\d+$/.test(spec.slice(i + 1))) bad('has a port that is not a number');
    port = Number(spec.slice(i + 1));
  }
  if (!isIPv4(host) && !isIPv6(host)) bad('is not an IP address');
  if (!Number.isInteger(port) || port < 1 || port > 65_535) bad('has a port outside 1…65535');
  return { host, port };
}

/** The `nameserver` addresses of a resolv.conf text, in order (scoped IPv6 `%iface` suffixes dropped). */
export function parseResolvConf(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const m = /^nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const ip = m[1]!.replace(/%.*$/, '');
    if (isIPv4(ip) || isIPv6(ip)) out.push(ip);
  }
  return out;
}

/**
 * The servers to use: the configured ones, else resolv.conf's (re-read when its mtime changes), minus
 * the resolver's own address (a host whose resolv.conf points at kvnet's resolver would loop).
 */
export class UpstreamList {
  private cached: { mtimeMs: number; servers: UpstreamServer[] } | undefined;

  constructor(
    private readonly configured: readonly UpstreamServer[],
    private readonly resolvConf: string,
    private readonly ownAddress: string,
  ) {}

  /** Never throws: an unreadable resolv.conf means no upstreams (and every forwarded name gets SERVFAIL). */
  servers(): readonly UpstreamServer[] {
    if (this.configured.length > 0) return this.configured.filter((s) => s.host !== this.ownAddress);
    let mtimeMs: number;
    try {
      mtimeMs = statSync(this.resolvConf).mtimeMs;
    } catch {
      return [];
    }
    if (this.cached?.mtimeMs !== mtimeMs) {
      let text = '';
      try {
        text = readFileSync(this.resolvConf, 'utf8');
      } catch {
        // vanished between stat and read: no servers this time
      }
      this.cached = { mtimeMs, servers: parseResolvConf(text).filter((ip) => ip !== this.ownAddress).map((host) => ({ host, port: DNS_PORT })) };
    }
    return this.cached.servers;
  }
}

/** Whether `answer` answers `query` (sent with `id`): a response, same id, same question section. */
function answers(answer: Buffer, id: number, questionWire: Buffer): boolean {
  const h = readHeader(answer);
  if (!h || !h.qr || h.id !== id || h.qdcount !== 1) return false;
  return answer.length >= HEADER_BYTES + questionWire.length && answer.subarray(HEADER_BYTES, HEADER_BYTES + questionWire.length).equals(questionWire);
}

function questionWireOf(query: Buffer): Buffer | undefined {
  try {
    const { end } = readName(query, HEADER_BYTES);
    return end + 4 <= query.length ? query.subarray(HEADER_BYTES, end + 4) : undefined;
  } catch {
    return undefined;
  }
}

function exchangeUdp(server: UpstreamServer, query: Buffer, id: number, question: Buffer, timeoutMs: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    let sock: UdpSocket;
    try {
      sock = createSocket(isIPv6(server.host) ? 'udp6' : 'udp4');
    } catch {
      resolve(undefined);
      return;
    }
    const done = (v: Buffer | undefined): void => {
      clearTimeout(timer);
      sock.removeAllListeners('message');
      try {
        sock.close();
      } catch {
        // already closed
      }
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.on('error', () => done(undefined));
    sock.on('message', (msg, rinfo) => {
      // Off-path and stray datagrams are ignored; the timer still runs.
      if (rinfo.port === server.port && rinfo.address === server.host && answers(msg, id, question)) done(msg);
    });
    sock.send(query, server.port, server.host, (err) => {
      if (err) done(undefined);
    });
  });
}

function exchangeTcp(server: UpstreamServer, query: Buffer, id: number, question: Buffer, timeoutMs: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const sock: Socket = connect({ host: server.host, port: server.port });
    let buf = Buffer.alloc(0);
    const done = (v: Buffer | undefined): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.on('error', () => done(undefined));
    sock.on('close', () => done(undefined));
    sock.on('connect', () => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(query.length, 0);
      sock.write(Buffer.concat([len, query]));
    });
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2) return;
      const n = buf.readUInt16BE(0);
      if (buf.length < 2 + n) return;
      const msg = Buffer.from(buf.subarray(2, 2 + n));
      done(answers(msg, id, question) ? msg : undefined);
    });
  });
}

export interface ForwarderOptions {
  readonly upstreams: () => readonly UpstreamServer[];
  readonly timeoutMs?: number;
  readonly maxInFlight?: number;
}

export type ForwardOutcome =
  | { readonly kind: 'answer'; readonly reply: Buffer }
  /** Every server failed or timed out (or there is none): the caller answers SERVFAIL. */
  | { readonly kind: 'failed' }
  /** Too many forwards in flight: the caller answers REFUSED. */
  | { readonly kind: 'busy' };

/** Forwards queries upstream; holds no socket between queries. */
export class Forwarder {
  private inFlight = 0;
  private readonly timeoutMs: number;
  private readonly maxInFlight: number;

  constructor(private readonly options: ForwarderOptions) {
    this.timeoutMs = options.timeoutMs ?? UPSTREAM_TIMEOUT_MS;
    this.maxInFlight = options.maxInFlight ?? MAX_FORWARDS_IN_FLIGHT;
  }

  /** Forwards `query` (a parsed, valid query) over `transport`; the reply carries the query's own id. */
  async forward(query: Buffer, transport: 'udp' | 'tcp'): Promise<ForwardOutcome> {
    if (query.length < HEADER_BYTES || query.length > MAX_MESSAGE_BYTES) return { kind: 'failed' };
    const question = questionWireOf(query);
    if (!question) return { kind: 'failed' };
    if (this.inFlight >= this.maxInFlight) return { kind: 'busy' };
    this.inFlight++;
    try {
      const clientId = query.readUInt16BE(0);
      let fallback: Buffer | undefined;
      for (const server of this.options.upstreams().slice(0, MAX_UPSTREAMS_TRIED)) {
        const id = randomInt(0, 0x10000);
        const out = Buffer.from(query);
        out.writeUInt16BE(id, 0);
        const reply = transport === 'tcp' ? await exchangeTcp(server, out, id, question, this.timeoutMs) : await exchangeUdp(server, out, id, question, this.timeoutMs);
        if (!reply) continue;
        reply.writeUInt16BE(clientId, 0);
        const rcode = reply.readUInt16BE(2) & 0xf;
        if (rcode === RCODE.SERVFAIL || rcode === RCODE.REFUSED) {
          fallback ??= reply;
          continue;
        }
        return { kind: 'answer', reply };
      }
      return fallback ? { kind: 'answer', reply: fallback } : { kind: 'failed' };
    } finally {
      this.inFlight--;
    }
  }
}
