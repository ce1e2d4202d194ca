/**
 * A DNS client that lives inside a network namespace for the duration of a test or benchmark
 * (`nsenter --net=… node --import tsx dns-probe.ts`), so each query costs a packet, not a process.
 * One JSON request per stdin line, one JSON answer per stdout line, matched by `id`:
 *
 * - `{id, op:'query', server, port?, name, type, transport?, timeoutMs?}` →
 *   `{id, ok:true, rcode, tc, aa, ra, answers:[{type, data, ttl}], ms}` or `{id, ok:false, error}`;
 * - `{id, op:'raw', server, port?, transport, hex, timeoutMs?}`: sends the bytes as they are (over TCP
 *   without adding framing) → `{id, ok:true, hex}` with the first reply (UDP) or everything received
 *   until the server closed or the timeout (TCP; `closed` says whether the server closed);
 * - `{id, op:'bench', server, port?, name, type, count, warmup}`: sequential UDP queries →
 *   `{id, ok:true, samplesMs, failures}`;
 * - `{id, op:'wait', server, port?, name, type, want:'present'|'absent', ip?, intervalMs?, timeoutMs?}`:
 *   asks every `intervalMs` (default 5) until an answer holds `ip` (or any address) — or, for `absent`,
 *   holds none — → `{id, ok:true, at, polls}` with `at` the wall-clock time (Date.now()) of that answer,
 *   or `{id, ok:false, error}` after `timeoutMs` (default 60 000).
 */

import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { decodeMessage, encodeQuery } from '../../packages/agent/src/names/dns-codec.ts';

const DEFAULT_TIMEOUT_MS = 2_000;

interface Request {
  id: number;
  op: 'query' | 'raw' | 'bench' | 'wait';
  server: string;
  port?: number;
  name?: string;
  type?: number;
  transport?: 'udp' | 'tcp';
  hex?: string;
  timeoutMs?: number;
  count?: number;
  warmup?: number;
  want?: 'present' | 'absent';
  ip?: string;
  intervalMs?: number;
}

function udpExchange(server: string, port: number, packet: Buffer, timeoutMs: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const sock = createSocket('udp4');
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    function finish(v: Buffer | undefined): void {
      clearTimeout(timer);
      sock.close();
      resolve(v);
    }
    sock.on('error', () => finish(undefined));
    sock.on('message', (msg) => finish(msg));
    sock.send(packet, port, server);
  });
}

function tcpExchange(server: string, port: number, bytes: Buffer, timeoutMs: number, framed: boolean): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const sock = connect({ host: server, port });
    let data = Buffer.alloc(0);
    let closed = false;
    const timer = setTimeout(() => finish(), timeoutMs);
    function finish(): void {
      clearTimeout(timer);
      sock.destroy();
      resolve({ data, closed });
    }
    sock.on('error', () => finish());
    sock.on('connect', () => sock.write(bytes));
    sock.on('data', (c: Buffer) => {
      data = Buffer.concat([data, c]);
      if (framed && data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) finish();
    });
    sock.on('end', () => {
      closed = true;
      finish();
    });
  });
}

async function query(r: Request): Promise<Record<string, unknown>> {
  const id = Math.floor(Math.random() * 65536);
  const packet = encodeQuery(id, r.name!, r.type ?? 1);
  const t0 = performance.now();
  let reply: Buffer | undefined;
  if (r.transport === 'tcp') {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(packet.length, 0);
    const { data } = await tcpExchange(r.server, r.port ?? 53, Buffer.concat([len, packet]), r.timeoutMs ?? DEFAULT_TIMEOUT_MS, true);
    reply = data.length >= 2 ? data.subarray(2, 2 + data.readUInt16BE(0)) : undefined;
  } else {
    reply = await udpExchange(r.server, r.port ?? 53, packet, r.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  }
  const ms = performance.now() - t0;
  if (!reply) return { ok: false, error: 'timeout' };
  const m = decodeMessage(reply);
  if (m.header.id !== id) return { ok: false, error: `reply id ${m.header.id} is not the query's ${id}` };
  return { ok: true, rcode: m.header.rcode, tc: m.header.tc, aa: m.header.aa, ra: m.header.ra, answers: m.answers.map((a) => ({ type: a.type, data: a.data, ttl: a.ttl })), ms };
}

async function raw(r: Request): Promise<Record<string, unknown>> {
  const bytes = Buffer.from(r.hex ?? '', 'hex');
  if (r.transport === 'tcp') {
    const { data, closed } = await tcpExchange(r.server, r.port ?? 53, bytes, r.timeoutMs ?? DEFAULT_TIMEOUT_MS, false);
    return { ok: true, hex: data.toString('hex'), closed };
  }
  const reply = await udpExchange(r.server, r.port ?? 53, bytes, r.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  return reply ? { ok: true, hex: reply.toString('hex') } : { ok: false, error: 'timeout' };
}

async function bench(r: Request): Promise<Record<string, unknown>> {
  const samplesMs: number[] = [];
  let failures = 0;
  const total = (r.warmup ?? 0) + (r.count ?? 1);
  for (let i = 0; i < total; i++) {
    const res = await query({ ...r, op: 'query', transport: 'udp' });
    if (!res.ok || res.rcode !== 0) failures++;
    else if (i >= (r.warmup ?? 0)) samplesMs.push(res.ms as number);
  }
  return { ok: true, samplesMs, failures };
}

async function wait(r: Request): Promise<Record<string, unknown>> {
  const deadline = Date.now() + (r.timeoutMs ?? 60_000);
  for (let polls = 1; ; polls++) {
    const res = await query({ ...r, op: 'query', transport: 'udp', timeoutMs: 1000 });
    const at = Date.now();
    const ips = res.ok ? ((res.answers as Array<{ data: string }> | undefined) ?? []).map((a) => a.data) : [];
    const present = r.ip ? ips.includes(r.ip) : ips.length > 0;
    if (res.ok && present === (r.want !== 'absent')) return { ok: true, at, polls };
    if (at > deadline) return { ok: false, error: `${r.name} not ${r.want ?? 'present'} after ${polls} queries` };
    await new Promise((resolve) => setTimeout(resolve, r.intervalMs ?? 5));
  }
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let req: Request;
  try {
    req = JSON.parse(line) as Request;
  } catch {
    return;
  }
  const run = req.op === 'raw' ? raw(req) : req.op === 'bench' ? bench(req) : req.op === 'wait' ? wait(req) : query(req);
  void run
    .catch((err: Error) => ({ ok: false, error: err.message }))
    .then((res) => process.stdout.write(`${JSON.stringify({ id: req.id, ...res })}\n`));
});
rl.on('close', () => process.exit(0));
