/**
 * The CLI against a stand-in for the agent's socket (a plain HTTP server on a unix socket that
 * records requests and returns canned answers): request shapes, output formats, error messages and
 * exit codes. The real agent is exercised in cli-cluster.test.ts.
 */

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../src/program.ts';

interface Seen {
  method: string;
  url: string;
  body: unknown;
}

const net = {
  id: 'f'.repeat(64), name: 'multi', vni: 4097, subnet: '10.0.1.0/24', gateway: '10.0.1.1', internal: false,
  labels: {}, options: {}, auxAddresses: {}, createdAt: '2026-01-01T00:00:00.000Z',
  endpoints: [{ id: 'e'.repeat(64), name: 'c1', network: 'f'.repeat(64), node: 'h1', address: '10.0.1.2/24', ip: '10.0.1.2', mac: '02:42:0a:00:01:02' }],
};

async function withAgent(
  answer: (s: Seen) => { status: number; body?: unknown },
  fn: (socket: string, seen: Seen[]) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-cli-unit-'));
  const socket = join(dir, 'agent.sock');
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    let text = '';
    req.on('data', (d: Buffer) => (text += d.toString()));
    req.on('end', () => {
      const s = { method: req.method ?? '', url: req.url ?? '', body: text ? JSON.parse(text) : undefined };
      seen.push(s);
      const a = answer(s);
      res.writeHead(a.status, { 'content-type': 'application/json' }).end(a.body === undefined ? undefined : JSON.stringify(a.body));
    });
  });
  await new Promise<void>((r) => server.listen(socket, () => r()));
  try {
    await fn(socket, seen);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(argv, { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

test('network create sends every flag and prints the id', async (t) => {
  await withAgent(() => ({ status: 201, body: net }), async (socket, seen) => {
    const r = await cli('--socket', socket, 'network', 'create', '--subnet', '10.0.1.0/24', '--gateway', '10.0.1.1', '--ip-range', '10.0.1.128/25',
      '--aux-address', 'r=10.0.1.5', '--aux-address', 's=10.0.1.6', '--internal', '--label', 'a=b', '-o', 'k=v=w', 'multi');
    t.is(r.code, 0, r.err);
    t.is(r.out, `${net.id}\n`);
    t.deepEqual(seen, [{
      method: 'POST', url: '/v1/networks',
      body: { name: 'multi', subnet: '10.0.1.0/24', gateway: '10.0.1.1', ipRange: '10.0.1.128/25', auxAddresses: { r: '10.0.1.5', s: '10.0.1.6' }, internal: true, labels: { a: 'b' }, options: { k: 'v=w' } },
    }]);
  });
});

test('network ls prints the table; --format json the array', async (t) => {
  await withAgent(() => ({ status: 200, body: [net] }), async (socket) => {
    const r = await cli('--socket', socket, 'network', 'ls');
    t.is(r.code, 0);
    t.is(r.out, `NETWORK ID     NAME    VNI    SUBNET        ENDPOINTS\n${'f'.repeat(12)}   multi   4097   10.0.1.0/24   1\n`);
    const j = await cli('--socket', socket, 'network', 'ls', '--format', 'json');
    t.deepEqual(JSON.parse(j.out), [net]);
  });
});

test('agent errors are printed as "kvnet: <message>" with exit code 1; inspect prints what it found', async (t) => {
  await withAgent(
    (s) => (s.url.endsWith('/multi') ? { status: 200, body: net } : { status: 404, body: { error: 'no such network: nope', code: 'KVNET_NOT_FOUND' } }),
    async (socket, seen) => {
      const r = await cli('--socket', socket, 'network', 'inspect', 'multi', 'nope');
      t.is(r.code, 1);
      t.deepEqual(JSON.parse(r.out), [net]);
      t.is(r.err, 'kvnet: no such network: nope\n');
      t.deepEqual(seen.map((s) => `${s.method} ${s.url}`), ['GET /v1/networks/multi', 'GET /v1/networks/nope']);
    },
  );
});

test('connect and disconnect address the endpoint API; KVNET_SOCKET selects the agent', async (t) => {
  await withAgent((s) => (s.method === 'POST' ? { status: 201, body: net.endpoints[0] } : { status: 204 }), async (socket, seen) => {
    process.env.KVNET_SOCKET = socket;
    try {
      const c = await cli('network', 'connect', 'multi', '--netns', '/run/netns/c1', '--name', 'c1', '--ip', '10.0.1.2');
      t.is(c.code, 0, c.err);
      t.deepEqual(JSON.parse(c.out), net.endpoints[0]);
      const d = await cli('network', 'disconnect', 'multi', 'c1');
      t.is(d.code, 0, d.err);
    } finally {
      delete process.env.KVNET_SOCKET;
    }
    t.deepEqual(seen.map((s) => [s.method, s.url, s.body]), [
      ['POST', '/v1/networks/multi/endpoints', { netns: '/run/netns/c1', name: 'c1', ip: '10.0.1.2' }],
      ['DELETE', '/v1/networks/multi/endpoints/c1', undefined],
    ]);
  });
});

test('connect --alias (repeatable) sends aliases', async (t) => {
  await withAgent(() => ({ status: 201, body: net.endpoints[0] }), async (socket, seen) => {
    const c = await cli('--socket', socket, 'network', 'connect', 'multi', '--netns', '/run/netns/c1', '--name', 'c1', '--alias', 'web', '--alias', 'www');
    t.is(c.code, 0, c.err);
    t.deepEqual(seen.map((s) => s.body), [{ netns: '/run/netns/c1', name: 'c1', aliases: ['web', 'www'] }]);
  });
});

test('kvnet dns status and stop without a resolver say so (status exits 1)', async (t) => {
  const status = await cli('--socket', '/nonexistent/kvnet.sock', 'dns', 'status');
  t.is(status.code, 1);
  t.is(status.err, 'kvnet: no kvnet resolver runs on /nonexistent/kvnet-resolver.sock\n');
  const stop = await cli('dns', 'stop', '--dns-socket', '/nonexistent/r.sock');
  t.is(stop.code, 0, stop.err);
  t.is(stop.out, 'no kvnet resolver runs on /nonexistent/r.sock\n');
});

test('usage errors exit 2 with "kvnet: " messages; --help exits 0', async (t) => {
  const missing = await cli('network', 'connect', 'multi');
  t.is(missing.code, 2);
  t.regex(missing.err, /^kvnet: required option '--netns <path>' not specified/);
  const unknown = await cli('network', 'frobnicate');
  t.is(unknown.code, 2);
  t.regex(unknown.err, /^kvnet: unknown command 'frobnicate'/);
  const badKv = await cli('--socket', '/nonexistent.sock', 'network', 'create', '--label', 'novalue', 'n');
  t.is(badKv.code, 2);
  t.is(badKv.err, 'kvnet: invalid --label "novalue": expected KEY=VALUE\n');
  const badFormat = await cli('network', 'ls', '--format', 'yaml');
  t.is(badFormat.code, 2);
  const noAdvertise = await cli('agent', '--cluster-store', 'local:///tmp/x.db');
  t.is(noAdvertise.code, 2);
  t.regex(noAdvertise.err, /--cluster-advertise is required/);
  const badStore = await cli('agent', '--cluster-store', 'bogus://x', '--cluster-advertise', '198.18.0.1');
  t.is(badStore.code, 2);
  t.regex(badStore.err, /^kvnet: invalid cluster store "bogus:\/\/x"/);
  const badOpt = await cli('agent', '--cluster-store-opt', 'kv.nope=1', '--cluster-advertise', '198.18.0.1');
  t.is(badOpt.code, 2);
  t.regex(badOpt.err, /unknown store option "kv.nope"/);
  const badPrefix = await cli('agent', '--name-prefix', 'TOOLONG', '--cluster-advertise', '198.18.0.1');
  t.is(badPrefix.code, 2);
  t.regex(badPrefix.err, /invalid --name-prefix "TOOLONG"/);
  const help = await cli('network', 'create', '--help');
  t.is(help.code, 0);
  t.regex(help.out, /--aux-address <name=ip>/);
});

test('an agent that is not running gets a clear message', async (t) => {
  const r = await cli('--socket', '/nonexistent/kvnet.sock', 'node', 'ls');
  t.is(r.code, 1);
  t.is(r.err, 'kvnet: cannot reach the kvnet agent at /nonexistent/kvnet.sock: is the agent running? (start it with `kvnet agent`, or pass --socket)\n');
});
