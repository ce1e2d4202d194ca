/**
 * The names face on the real kernel, without an agent (root): the resolver process started by
 * startNames inside a simulated host, listening in overlay namespaces built like the data plane's;
 * queries from container namespaces over their kvnet interface (busybox nslookup and a DNS probe); an
 * upstream DNS server on the underlay. See test/support/names-fixture.ts for the stage.
 */

import test from 'ava';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { encodeQuery, QTYPE, RCODE } from '../../src/names/dns-codec.ts';
import { buildNameTable, localSandboxes } from '../../src/names/name-table.ts';
import type { Names, NamesContext } from '../../src/names/names.ts';
import { startNames } from '../../src/names/names-client.ts';
import { createNamesFixture, NET, RESOLVER, UPSTREAM_ADDRESS, type DnsProbe, type NamesFixture } from '../../../../test/support/names-fixture.ts';
import { BIG_ANSWERS, UPSTREAM_ANSWER } from '../../../../test/support/dns-upstream-server.ts';
import { makeTempDir, run, runId, waitFor } from '../../../../test/support/process.ts';

const logger = pino({ level: 'silent' });
let fx: NamesFixture;
let names: Names;
let ctx: NamesContext;
const probes: Record<string, DnsProbe> = {};

const tableOf = (view: ReturnType<NamesFixture['view']>) => buildNameTable(view, localSandboxes(view, 'h1'));
const addrs = (a: { answers?: Array<{ data: string }> }) => (a.answers ?? []).map((x) => x.data).sort();
const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test.before(async () => {
  if (process.getuid?.() !== 0) throw new Error('names-kernel.test.ts needs root (network namespaces)');
  fx = await createNamesFixture(runId());
  ctx = {
    logger,
    socketPath: fx.socketPath,
    resolverCommand: fx.resolverCommand,
    resolverLog: join(makeTempDir('names-log'), 'resolver.log'),
    upstreams: [UPSTREAM_ADDRESS],
    hostListener: true,
  };
  names = await startNames(ctx);
  fx.track(names.resolverPid);
  for (const c of ['ca1', 'cab', 'ci1', 'cx', 'cb1']) probes[c] = await fx.probe(c);
});

test.after.always(async () => {
  await names?.shutdown().catch(() => undefined);
  await fx?.destroy();
});

test.serial('the resolver process listens on UDP and TCP 53 in every overlay namespace and in the host namespace', async (t) => {
  t.true(names.startedResolver);
  const report = await names.update(tableOf(fx.view()), fx.listeners);
  t.deepEqual(report.listeners.map((l) => [l.netns, l.state]), [...fx.listeners.map((l) => [l.netns, 'listening']), ['host', 'listening']]);
  for (const l of fx.listeners) {
    const ss = await run('nsenter', [`--net=${l.netns}`, 'ss', '-Hlnup'], {});
    t.regex(ss.stdout, new RegExp(`${RESOLVER.replace(/\./g, '\\.')}:53\\b.*pid=${names.resolverPid}`), `UDP in ${l.netns}`);
    const tcp = await run('nsenter', [`--net=${l.netns}`, 'ss', '-Hltnp'], {});
    t.regex(tcp.stdout, new RegExp(`${RESOLVER.replace(/\./g, '\\.')}:53\\b.*pid=${names.resolverPid}`), `TCP in ${l.netns}`);
    const lo = await run('nsenter', [`--net=${l.netns}`, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'lo'], {});
    t.true(lo.stdout.includes(`${RESOLVER}/32`));
  }
  const lo = await run('ip', ['-n', fx.host.name, '-4', '-o', 'addr', 'show', 'dev', 'lo'], {});
  t.true(lo.stdout.includes(`${RESOLVER}/32`), 'the host namespace has the address on lo');
});

test.serial('names across hosts: container names, <name>.<network>, aliases (busybox nslookup over the kvnet interface)', async (t) => {
  t.deepEqual((await fx.nslookup('ca1', 'r1')).addresses, ['10.61.0.10'], 'a remote endpoint');
  t.deepEqual((await fx.nslookup('ca1', 'ca2')).addresses, ['10.61.0.3'], 'a local endpoint');
  t.deepEqual((await fx.nslookup('ca1', 'r1.multi')).addresses, ['10.61.0.10']);
  t.deepEqual((await fx.nslookup('ca1', 'web')).addresses.sort(), ['10.61.0.10', '10.61.0.3'], 'an alias of two endpoints');
  const r = await probes.ca1!.query('r1');
  t.like(r, { ok: true, rcode: RCODE.NOERROR, aa: true, ra: true });
  t.deepEqual(r.answers, [{ type: QTYPE.A, data: '10.61.0.10', ttl: 0 }]);
  t.deepEqual(addrs(await probes.ca1!.query('r1', QTYPE.A, 'tcp')), ['10.61.0.10'], 'over TCP too');
});

test.serial('PTR for addresses of the asker\'s networks', async (t) => {
  t.deepEqual((await fx.nslookup('ca1', '10.61.0.10')).names, ['r1.multi']);
  t.deepEqual(addrs(await probes.ca1!.query('3.0.61.10.in-addr.arpa', QTYPE.PTR)), ['ca2.multi']);
});

test.serial('isolation: a container on multi does not get other\'s names; one on both networks gets both', async (t) => {
  const leak = await probes.ca1!.query('rb');
  t.true(leak.ok);
  t.deepEqual(addrs(leak), [], 'rb (network other) is not answered to a container only on multi');
  t.not(leak.aa, true);
  // The upstream's log reaches its file through a pipe: wait for it.
  t.truthy(await waitFor('the upstream to log rb', () => fx.upstream.log().includes(' rb 1'), 5000), 'the name went upstream like any outside name');
  t.deepEqual(addrs(await probes.cab!.query('rb')), ['10.62.0.10'], 'cab is on other too (its query arrives on multi)');
  t.deepEqual(addrs(await probes.cab!.query('ca1')), ['10.61.0.2']);
  t.deepEqual(addrs(await probes.cb1!.query('cab')), ['10.62.0.4'], 'cab on other, asked from other');
  t.deepEqual(addrs(await probes.cb1!.query('ca1')), [], 'ca1 (only multi) is not answered to cb1 (only other)');
});

test.serial('other names are forwarded upstream: answers, NXDOMAIN, and truncation falls back to TCP', async (t) => {
  t.deepEqual((await fx.nslookup('ca1', 'www.up.test')).addresses, [UPSTREAM_ANSWER]);
  const nx = await probes.ca1!.query('nx.up.test');
  t.like(nx, { ok: true, rcode: RCODE.NXDOMAIN });
  const udp = await probes.ca1!.query('big.up.test');
  t.like(udp, { ok: true, tc: true });
  t.true((udp.answers ?? []).length < BIG_ANSWERS);
  const tcp = await probes.ca1!.query('big.up.test', QTYPE.A, 'tcp');
  t.like(tcp, { ok: true, tc: false });
  t.is(tcp.answers!.length, BIG_ANSWERS);
  t.truthy(await waitFor('the upstream to log the TCP query', () => /Q tcp 198\.18\.0\.1 big\.up\.test 1/.test(fx.upstream.log()), 5000), 'the TCP retry went upstream over TCP, from the host');
});

test.serial('internal-only sandbox: its network\'s names resolve; nothing is forwarded (REFUSED)', async (t) => {
  t.deepEqual(addrs(await probes.ci1!.query('ri')), ['10.63.0.10']);
  t.deepEqual((await fx.nslookup('ci1', 'ci2')).addresses, ['10.63.0.3']);
  const name = `leak${fx.prefix}.up.test`;
  const r = await probes.ci1!.query(name);
  t.like(r, { ok: true, rcode: RCODE.REFUSED, ra: false });
  t.like(await probes.ci1!.query(name, QTYPE.A, 'tcp'), { ok: true, rcode: RCODE.REFUSED });
  // A forwarded name that follows it does show up upstream, so the log is current when checked.
  t.deepEqual(addrs(await probes.ca1!.query(`after${fx.prefix}.up.test`)), [UPSTREAM_ANSWER]);
  await waitFor('the upstream to log the later name', () => fx.upstream.log().includes(`after${fx.prefix}.up.test`), 5000);
  t.false(fx.upstream.log().includes(name), 'the upstream never saw it');
});

test.serial('a container on no kvnet network reaches the host namespace\'s listener: forwarding only', async (t) => {
  t.deepEqual(addrs(await probes.cx!.query('www.up.test')), [UPSTREAM_ANSWER]);
  const r = await probes.cx!.query('r1');
  t.true(r.ok);
  t.deepEqual(addrs(r), [], 'no kvnet names to a non-kvnet container');
});

test.serial('freshness: a removed endpoint stops resolving with the next table, a new one resolves', async (t) => {
  t.deepEqual(addrs(await probes.ca1!.query('r1')), ['10.61.0.10']);
  const extra = [{ ...fx.view().endpoints.get(NET.multi.id)!.get('r1-multi')!, id: 'new-multi', name: 'newcomer', ip: '10.61.0.11', address: '10.61.0.11/24' }];
  await names.update(tableOf(fx.view({ without: ['r1'], extra })), fx.listeners);
  t.deepEqual(addrs(await probes.ca1!.query('r1')), []);
  t.deepEqual(addrs(await probes.ca1!.query('newcomer')), ['10.61.0.11']);
  await names.update(tableOf(fx.view()), fx.listeners);
  t.deepEqual(addrs(await probes.ca1!.query('r1')), ['10.61.0.10']);
  // The same through patches (what the agent sends when only records changed): r1 goes, a newcomer comes, and back.
  const r1 = { endpoint: 'r1-multi', name: 'r1', aliases: ['web'], ip: '10.61.0.10' };
  await names.patch({ networks: [{ id: NET.multi.id, put: [{ endpoint: 'new-multi', name: 'newcomer', aliases: ['nc'], ip: '10.61.0.11' }], remove: ['r1-multi'] }] });
  t.deepEqual(addrs(await probes.ca1!.query('r1')), []);
  t.deepEqual(addrs(await probes.ca1!.query('newcomer')), ['10.61.0.11']);
  t.deepEqual(addrs(await probes.ca1!.query('nc')), ['10.61.0.11']);
  await names.patch({ networks: [{ id: NET.multi.id, put: [r1], remove: ['new-multi'] }] });
  t.deepEqual(addrs(await probes.ca1!.query('r1')), ['10.61.0.10']);
  t.deepEqual(addrs(await probes.ca1!.query('newcomer')), []);
});

test.serial('the feeding side restarts: queries keep being answered, and a new feeder reconnects to the same resolver', async (t) => {
  const pid = names.resolverPid;
  let stop = false;
  let answered = 0;
  const failures: string[] = [];
  const loop = (async () => {
    while (!stop) {
      const r = await probes.ca1!.query('r1', QTYPE.A, 'udp', { timeoutMs: 1000 });
      if (r.ok && addrs(r)[0] === '10.61.0.10') answered++;
      else failures.push(JSON.stringify(r));
    }
  })();
  await names.stop();
  await new Promise((r) => setTimeout(r, 1500));
  t.true(pidAlive(pid), 'the resolver outlives its feeder');
  // A new feeder, reading upstreams from a resolv.conf that also lists the resolver itself (skipped: no loop).
  const resolvConf = join(makeTempDir('names-resolv'), 'resolv.conf');
  writeFileSync(resolvConf, `# test\nnameserver ${RESOLVER}\nnameserver ${UPSTREAM_ADDRESS}\n`);
  names = await startNames({ ...ctx, upstreams: [], resolvConf });
  t.false(names.startedResolver);
  t.is(names.resolverPid, pid);
  await names.update(tableOf(fx.view({ extra: [{ ...fx.view().endpoints.get(NET.multi.id)!.get('r1-multi')!, id: 'late-multi', name: 'late', ip: '10.61.0.12', address: '10.61.0.12/24' }] })), fx.listeners);
  stop = true;
  await loop;
  t.deepEqual(failures, []);
  t.true(answered > 5, `answered ${answered} queries during the restart`);
  t.deepEqual(addrs(await probes.ca1!.query('late')), ['10.61.0.12']);
  t.deepEqual(addrs(await probes.ca1!.query('www.up.test')), [UPSTREAM_ANSWER], 'forwarded through resolv.conf\'s upstream');
});

/** A small deterministic generator (mulberry32), so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function badPackets(): Array<{ what: string; bytes: Buffer; reply: 'formerr' | 'notimp' | 'none' | 'any' }> {
  const good = encodeQuery(0x4242, 'r1.multi', QTYPE.A);
  const out: Array<{ what: string; bytes: Buffer; reply: 'formerr' | 'notimp' | 'none' | 'any' }> = [];
  for (let n = 0; n < 12; n++) out.push({ what: `${n}-byte packet`, bytes: good.subarray(0, n), reply: 'none' });
  for (let n = 12; n < good.length; n++) out.push({ what: `query cut at ${n} bytes`, bytes: good.subarray(0, n), reply: 'formerr' });
  const selfPointer = Buffer.concat([good.subarray(0, 12), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
  out.push({ what: 'compression pointer to itself', bytes: selfPointer, reply: 'formerr' });
  const pingPong = Buffer.concat([good.subarray(0, 12), Buffer.from([1, 0x61, 0xc0, 16, 0xc0, 12, 0, 1, 0, 1])]);
  out.push({ what: 'two pointers pointing at each other', bytes: pingPong, reply: 'formerr' });
  const opcode = Buffer.from(good);
  opcode.writeUInt16BE(0x2900, 2); // opcode 5 (UPDATE), RD
  out.push({ what: 'opcode UPDATE', bytes: opcode, reply: 'notimp' });
  const response = Buffer.from(good);
  response.writeUInt16BE(0x8100, 2);
  out.push({ what: 'a response (QR set)', bytes: response, reply: 'none' });
  const twoQ = Buffer.from(good);
  twoQ.writeUInt16BE(2, 4);
  out.push({ what: 'qdcount 2', bytes: twoQ, reply: 'formerr' });
  const longLabel = Buffer.concat([good.subarray(0, 12), Buffer.from([0x3f]), Buffer.alloc(10, 0x61)]);
  out.push({ what: 'label longer than the packet', bytes: longLabel, reply: 'formerr' });
  const huge = Buffer.concat([good, Buffer.alloc(60_000, 0xff)]);
  out.push({ what: '60 kB datagram (a valid query plus junk)', bytes: huge, reply: 'any' });
  const rnd = prng(14);
  for (let i = 0; i < 200; i++) {
    const len = Math.floor(rnd() * 600);
    out.push({ what: `random ${len} bytes #${i}`, bytes: Buffer.from(Array.from({ length: len }, () => Math.floor(rnd() * 256))), reply: 'any' });
  }
  for (let i = 0; i < 100; i++) {
    const b = Buffer.from(good);
    for (let k = 0; k < 3; k++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
    out.push({ what: `bit-flipped query #${i}`, bytes: b, reply: 'any' });
  }
  return out;
}

test.serial('malformed, truncated, oversized, looping, wrong-opcode and random packets over UDP: FORMERR/NOTIMP or silence, and no crash', async (t) => {
  const pid = names.resolverPid;
  const p = probes.ca1!;
  const bads = badPackets();
  const BATCH = 25;
  for (let i = 0; i < bads.length; i += BATCH) {
    const batch = bads.slice(i, i + BATCH);
    const replies = await Promise.all(batch.map((bad) => p.request({ op: 'raw', transport: 'udp', hex: bad.bytes.toString('hex'), timeoutMs: bad.reply === 'formerr' || bad.reply === 'notimp' ? 2000 : 300 })));
    batch.forEach((bad, k) => {
      const r = replies[k]!;
      if (bad.reply === 'none') t.false(r.ok, `${bad.what}: no reply`);
      else if (bad.reply === 'formerr' || bad.reply === 'notimp') {
        t.true(r.ok, `${bad.what}: a reply`);
        const rcode = Buffer.from(r.hex ?? '', 'hex').readUInt16BE(2) & 0xf;
        t.is(rcode, bad.reply === 'formerr' ? RCODE.FORMERR : RCODE.NOTIMP, bad.what);
      }
    });
  }
  t.true(pidAlive(pid));
  t.deepEqual(addrs(await p.query('r1')), ['10.61.0.10'], 'still answering');
  const status = await names.status();
  t.true(status.counters.formerr! > 10 && status.counters.notimp! >= 1 && status.counters.dropped! >= 12);
});

test.serial('bad framing and bad packets over TCP: the connection is closed or answered, and the responder keeps answering', async (t) => {
  const pid = names.resolverPid;
  const p = probes.ca1!;
  const frame = (b: Buffer) => Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]);
  // length 0 and length < a header: nothing after can be framed, the server closes
  for (const bytes of [Buffer.from([0, 0]), Buffer.from([0, 5, 1, 2, 3, 4, 5])]) {
    const r = await p.request({ op: 'raw', transport: 'tcp', hex: bytes.toString('hex'), timeoutMs: 2000 });
    t.true(r.closed, `closed after ${bytes.toString('hex')}`);
  }
  // a length longer than what follows, then silence: no reply; the idle timeout ends it later
  const short = await p.request({ op: 'raw', transport: 'tcp', hex: Buffer.from([0x10, 0x00, 1, 2, 3]).toString('hex'), timeoutMs: 500 });
  t.is(short.hex, '');
  // every bad UDP packet of 12 bytes or more, each framed, all in one write, then a good query: one reply each (FORMERR/NOTIMP/answer), none for the dropped
  const bads = badPackets().filter((b) => b.bytes.length >= 12 && b.bytes.length <= 65_535);
  const good = encodeQuery(0x7777, 'r1', QTYPE.A);
  const all = Buffer.concat([...bads.map((b) => frame(b.bytes)), frame(good)]);
  const r = await p.request({ op: 'raw', transport: 'tcp', hex: all.toString('hex'), timeoutMs: 5000 });
  const data = Buffer.from(r.hex!, 'hex');
  const replies: Buffer[] = [];
  for (let o = 0; o + 2 <= data.length; ) {
    const n = data.readUInt16BE(o);
    replies.push(data.subarray(o + 2, o + 2 + n));
    o += 2 + n;
  }
  const goodReply = replies.find((m) => m.readUInt16BE(0) === 0x7777);
  t.truthy(goodReply, 'the good query after the bad ones was answered on the same connection');
  t.is(goodReply!.readUInt16BE(6), 1, 'with one answer');
  t.true(replies.length >= bads.filter((b) => b.reply === 'formerr' || b.reply === 'notimp').length + 1);
  t.true(pidAlive(pid));
  t.deepEqual(addrs(await p.query('r1', QTYPE.A, 'tcp')), ['10.61.0.10']);
});

test.serial('a namespace that appears after the update gets its listener within seconds, a re-created one gets a new one, one that goes is closed', async (t) => {
  const late = `/run/netns/${fx.prefix}ovz`;
  const report = await names.update(tableOf(fx.view()), [...fx.listeners, { network: NET.multi.id, netns: late }]);
  const r = report.listeners.find((l) => l.netns === late)!;
  t.is(r.state, 'failed');
  t.regex(r.error!, new RegExp(`${fx.prefix}ovz`));
  await run('ip', ['netns', 'add', `${fx.prefix}ovz`]);
  await waitFor('a listener in the new namespace', async () => (await names.status()).listeners.find((l) => l.netns === late)?.state === 'listening', 15_000, 200);
  const ss = await run('nsenter', [`--net=${late}`, 'ss', '-Hlnu'], {});
  t.true(ss.stdout.includes(`${RESOLVER}:53`));
  // Deleted and made again at the same path (as the data plane does with an unreadable namespace): the
  // old sockets are closed and new ones opened in the new namespace.
  await run('ip', ['netns', 'del', `${fx.prefix}ovz`]);
  await run('ip', ['netns', 'add', `${fx.prefix}ovz`]);
  // Both views must agree: sockets in the new namespace and the resolver's own report (a listener opened
  // while `ip netns add` was still mounting would show in ss for a moment, then be closed as failed).
  const reopened = async () => (await run('nsenter', [`--net=${late}`, 'ss', '-Hlnu'], {})).stdout.includes(`${RESOLVER}:53`) && (await names.status()).listeners.find((l) => l.netns === late)?.state === 'listening';
  await waitFor('a listener in the re-created namespace', reopened, 15_000, 200);
  await sleep(500);
  t.true(await reopened(), 'the re-created namespace keeps its listener');
  await run('ip', ['netns', 'del', `${fx.prefix}ovz`]);
  await names.update(tableOf(fx.view()), fx.listeners);
  t.false((await names.status()).listeners.some((l) => l.netns === late));
});

test.serial('shutdown: the resolver exits, and its addresses and socket are gone', async (t) => {
  const pid = names.resolverPid;
  await names.shutdown();
  t.false(pidAlive(pid));
  t.false(existsSync(fx.socketPath));
  for (const l of [...fx.listeners, { netns: fx.host.path }]) {
    const lo = await run('nsenter', [`--net=${l.netns}`, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'lo'], {});
    t.false(lo.stdout.includes(RESOLVER), `address removed in ${l.netns}`);
  }
});
