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

test('agent errors are printed as "kvnet: <message>" with exit code 1; inspect prints what it found, and nothing when it found nothing', async (t) => {
  await withAgent(
    (s) => (s.url.endsWith('/multi') ? { status: 200, body: net } : { status: 404, body: { error: 'no such network: nope', code: 'KVNET_NOT_FOUND' } }),
    async (socket, seen) => {
      const r = await cli('--socket', socket, 'network', 'inspect', 'multi', 'nope');
      t.is(r.code, 1);
      t.deepEqual(JSON.parse(r.out), [net]);
      t.is(r.err, 'kvnet: no such network: nope\n');
      t.deepEqual(seen.map((s) => `${s.method} ${s.url}`), ['GET /v1/networks/multi', 'GET /v1/networks/nope']);
      const none = await cli('--socket', socket, 'network', 'inspect', 'nope');
      t.is(none.code, 1);
      t.is(none.out, '', 'no "[]" before the error');
      t.is(none.err, 'kvnet: no such network: nope\n');
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
  const badOpt = await cli('agent', '--single-host', '--cluster-store-opt', 'kv.nope=1', '--cluster-advertise', '198.18.0.1');
  t.is(badOpt.code, 2);
  t.regex(badOpt.err, /unknown store option "kv.nope"/);
  const badPrefix = await cli('agent', '--single-host', '--name-prefix', 'TOOLONG', '--cluster-advertise', '198.18.0.1');
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

const net2 = {
  ...net, id: 'a'.repeat(64), name: 'backend', vni: 4098, subnet: '10.0.2.0/24', gateway: '10.0.2.1', labels: { team: 'db', tier: 'x' }, endpoints: [],
};

test('--version and version: the client, and the agent it talks to', async (t) => {
  const v = await cli('--version');
  t.is(v.code, 0);
  t.regex(v.out, /^kvnet version \d+\.\d+\.\d+, build \S+\n$/);
  const status = { node: 'h1', version: '9.9.9', commit: 'abc1234', pid: 42, storeUrl: 'etcd://x:2379/kvnet', store: { url: 'etcd://x:2379/kvnet', state: 'reachable' }, ready: true };
  await withAgent(() => ({ status: 200, body: status }), async (socket) => {
    const r = await cli('--socket', socket, 'version');
    t.is(r.code, 0, r.err);
    t.regex(r.out, /^Client:\n Version: +\d+\.\d+\.\d+\n/);
    t.regex(r.out, /\nAgent:\n Version: +9\.9\.9\n Commit: +abc1234\n Node name: +h1\n Pid: +42\n Store: +etcd:\/\/x:2379\/kvnet \(reachable\)\n$/);
    const f = await cli('--socket', socket, 'version', '-f', '{{.Agent.Version}} {{.Client.Version}}');
    t.regex(f.out, /^9\.9\.9 \d+\.\d+\.\d+\n$/);
  });
  const down = await cli('--socket', '/nonexistent/kvnet.sock', 'version');
  t.is(down.code, 1);
  t.regex(down.out, /^Client:/, 'the client part is printed anyway');
  t.regex(down.err, /cannot reach the kvnet agent/);
});

test('network ls: -q, --filter name/id/label, --no-trunc, Go templates with and without a table header', async (t) => {
  await withAgent(() => ({ status: 200, body: [net2, net] }), async (socket) => {
    const ls = (...a: string[]) => cli('--socket', socket, 'network', 'ls', ...a);
    t.is((await ls('-q')).out, `${'a'.repeat(12)}\n${'f'.repeat(12)}\n`);
    t.is((await ls('-q', '--no-trunc')).out, `${'a'.repeat(64)}\n${'f'.repeat(64)}\n`);
    t.is((await ls('-q', '--filter', 'name=ult')).out, `${'f'.repeat(12)}\n`, 'name matches part of the name');
    t.is((await ls('--format', '{{.Name}}', '--filter', 'label=team')).out, 'backend\n');
    t.is((await ls('--format', '{{.Name}}', '--filter', 'label=team=web')).out, '', 'label=k=v needs the value');
    t.is((await ls('--format', '{{.Name}}', '--filter', 'id=fff', '--filter', 'name=back')).out, '', 'different keys must all match');
    t.is((await ls('--format', '{{.Name}}', '--filter', 'name=multi', '--filter', 'name=back')).out, 'backend\nmulti\n', 'one key: any value');
    t.is((await ls('--format', '{{.Name}} {{.Label "team"}} {{.Endpoints}} {{json .Subnet}}')).out, 'backend db 0 "10.0.2.0/24"\nmulti  1 "10.0.1.0/24"\n');
    t.is((await ls('--format', 'table {{.Name}}\\t{{.Driver}}\\t{{.VNI}}')).out, 'NAME      DRIVER   VNI\nbackend   kvnet    4098\nmulti     kvnet    4097\n');
    const bad = await ls('--format', '{{.Nmae}}');
    t.is(bad.code, 2);
    t.regex(bad.err, /^kvnet: --format template: no field Nmae in \. \(fields: ID, Name,/);
    const unparsable = await ls('--format', '{{range .Labels}}');
    t.is(unparsable.code, 2);
    t.regex(unparsable.err, /^kvnet: invalid --format template: \{\{range\}\} at position 0 has no \{\{end\}\}/);
    const badFilter = await ls('--filter', 'colour=red');
    t.is(badFilter.code, 2);
    t.regex(badFilter.err, /invalid --filter "colour=red": expected KEY=VALUE with KEY one of name, id, label, driver/);
  });
});

test('network inspect -f renders a template per network (case-insensitive fields, range, json)', async (t) => {
  await withAgent((s) => ({ status: 200, body: s.url.endsWith('/multi') ? net : net2 }), async (socket) => {
    const r = await cli('--socket', socket, 'network', 'inspect', '-f', '{{.Name}} {{.Subnet}}{{range .Endpoints}} {{.Name}}={{.IP}}{{end}}', 'multi', 'backend');
    t.is(r.code, 0, r.err);
    t.is(r.out, 'multi 10.0.1.0/24 c1=10.0.1.2\nbackend 10.0.2.0/24\n');
    const j = await cli('--socket', socket, 'network', 'inspect', '-f', '{{json .Labels}}', 'backend');
    t.deepEqual(JSON.parse(j.out), { team: 'db', tier: 'x' });
    const kv = await cli('--socket', socket, 'network', 'inspect', '-f', '{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}', 'backend');
    t.is(kv.out, 'team=db;tier=x;\n');
  });
});

test('an input the agent refuses as invalid (e.g. --subnet) exits 2', async (t) => {
  await withAgent(() => ({ status: 400, body: { error: 'invalid subnet "10.0.0.0/40": is not an IPv4 CIDR', code: 'KVNET_INVALID_INPUT' } }), async (socket) => {
    const r = await cli('--socket', socket, 'network', 'create', '--subnet', '10.0.0.0/40', 'x');
    t.is(r.code, 2);
    t.is(r.err, 'kvnet: invalid subnet "10.0.0.0/40": is not an IPv4 CIDR\n');
  });
});

test('network prune removes only networks without endpoints, asks first unless -f', async (t) => {
  await withAgent((s) => (s.method === 'GET' ? { status: 200, body: [net2, net] } : { status: 204 }), async (socket, seen) => {
    const asked = await cli('--socket', socket, 'network', 'prune');
    t.is(asked.code, 0);
    t.deepEqual(seen, [], 'without an answer nothing is asked of the agent');
    const r = await cli('--socket', socket, 'network', 'prune', '-f');
    t.is(r.code, 0, r.err);
    t.is(r.out, 'Deleted Networks:\nbackend\n');
    t.deepEqual(seen.map((s) => `${s.method} ${s.url}`), ['GET /v1/networks', `DELETE /v1/networks/${'a'.repeat(64)}`]);
  });
  let said = '';
  const yes = await runCli(['--socket', '/nonexistent.sock', 'network', 'prune'], { out: () => undefined, err: () => undefined, prompt: async (q) => ((said = q), 'n') });
  t.is(yes, 0);
  t.regex(said, /Are you sure you want to continue\? \[y\/N\]/);
});

test('endpoint ls lists every endpoint with network, node, address and MAC; filters and -q', async (t) => {
  const other = { ...net2, endpoints: [{ id: 'b'.repeat(64), name: 'db1', network: 'a'.repeat(64), node: 'h2', address: '10.0.2.2/24', ip: '10.0.2.2', mac: '02:42:0a:00:02:02' }] };
  await withAgent(() => ({ status: 200, body: [other, net] }), async (socket) => {
    const r = await cli('--socket', socket, 'endpoint', 'ls');
    t.is(r.code, 0, r.err);
    t.is(r.out, [
      'ENDPOINT ID    NAME   NETWORK   NODE   ADDRESS       MAC',
      `${'b'.repeat(12)}   db1    backend   h2     10.0.2.2/24   02:42:0a:00:02:02`,
      `${'e'.repeat(12)}   c1     multi     h1     10.0.1.2/24   02:42:0a:00:01:02`,
      '',
    ].join('\n'));
    t.is((await cli('--socket', socket, 'endpoint', 'ls', '-q', '--filter', 'network=multi')).out, `${'e'.repeat(12)}\n`);
    t.is((await cli('--socket', socket, 'endpoint', 'ls', '--filter', 'node=h2', '--format', '{{.Name}} {{.Network}} {{.IP}}')).out, 'db1 backend 10.0.2.2\n');
  });
});

test('node ls shows each node\'s state; node rm sends force only when asked', async (t) => {
  const nodes = [
    { name: 'h1', advertise: '198.18.0.1', state: 'alive', version: '0.1.0', startedAt: 't', endpoints: 2, self: true },
    { name: 'h2', advertise: '198.18.0.2', state: 'unreachable', version: '0.1.0', startedAt: 't', endpoints: 1, self: false, probe: { ok: false, at: 't', detail: 'no answer' } },
    { name: 'h3', advertise: '198.18.0.3', state: 'down', endpoints: 3, self: false },
  ];
  await withAgent((s) => (s.method === 'GET' ? { status: 200, body: nodes } : { status: 200, body: { endpoints: 3, wasLive: false, tombstones: 0 } }), async (socket, seen) => {
    const r = await cli('--socket', socket, 'node', 'ls');
    t.is(r.out, [
      'NAME   STATE         ADVERTISE    ENDPOINTS   VERSION',
      'h1 *   alive         198.18.0.1   2           0.1.0',
      'h2     unreachable   198.18.0.2   1           0.1.0',
      'h3     down          198.18.0.3   3           -',
      '',
    ].join('\n'));
    t.is((await cli('--socket', socket, 'node', 'ls', '-q', '--filter', 'state=down')).out, 'h3\n');
    t.is((await cli('--socket', socket, 'node', 'ls', '--format', '{{.Name}}:{{.State}}')).out, 'h1:alive\nh2:unreachable\nh3:down\n');
    t.is((await cli('--socket', socket, 'node', 'rm', 'h3')).out, 'h3\n');
    await cli('--socket', socket, 'node', 'rm', '--force', 'h2');
    t.deepEqual(seen.filter((s) => s.method === 'DELETE').map((s) => s.url), ['/v1/nodes/h3', '/v1/nodes/h2?force=1']);
  });
});

test('doctor prints one line per finding and what to do; exits 1 on problems, 0 when healthy', async (t) => {
  const report = (healthy: boolean) => ({
    node: 'h1', at: '2026-01-01T00:00:00.000Z', durationMs: 120, healthy, problems: healthy ? 0 : 1, warnings: 0,
    findings: [
      { area: 'store', status: 'ok', summary: 'cluster store etcd://x answers (one read 1.1 ms)' },
      ...(healthy ? [] : [{ area: 'kernel', status: 'fail', summary: 'network multi: FDB entry 02:42:0a:00:01:03 → 198.18.0.2 (c2 on h2) is missing', fix: 'the agent repairs this' }]),
    ],
  });
  for (const healthy of [false, true]) {
    await withAgent(() => ({ status: 200, body: report(healthy) }), async (socket) => {
      const r = await cli('--socket', socket, 'doctor');
      t.is(r.code, healthy ? 0 : 1);
      t.regex(r.out, /^kvnet doctor on node h1 /);
      t.regex(r.out, /\n {2}ok {4}store {9}cluster store etcd:\/\/x answers/);
      if (!healthy) {
        t.regex(r.out, /\n {2}FAIL {2}kernel {8}network multi: FDB entry 02:42:0a:00:01:03 → 198\.18\.0\.2 \(c2 on h2\) is missing\n {22}→ the agent repairs this\n1 problem\n$/);
        t.is(r.err, 'kvnet: 1 problem found (see above)\n');
      } else t.regex(r.out, /\nhealthy\n$/);
      const j = await cli('--socket', socket, 'doctor', '--json');
      t.deepEqual(JSON.parse(j.out), report(healthy));
    });
  }
});

test('status --wait returns once the agent runs and its plugin socket answers; fails with the reason after the wait', async (t) => {
  let calls = 0;
  await withAgent(() => ({ status: 200, body: { node: 'h1', phase: ++calls < 3 ? 'starting' : 'running', ready: calls >= 3 } }), async (socket) => {
    const r = await cli('--socket', socket, 'status', '--wait', '10s');
    t.is(r.code, 0, r.err);
    t.is(JSON.parse(r.out).phase, 'running');
    t.true(calls >= 3);
  });
  await withAgent(() => ({ status: 200, body: { node: 'h1', phase: 'running', dockerPlugin: '/nonexistent/plugin.sock' } }), async (socket) => {
    const r = await cli('--socket', socket, 'status', '--wait', '600ms');
    t.is(r.code, 1);
    t.is(r.err, 'kvnet: the kvnet agent was not running within 1s: the Docker plugin socket /nonexistent/plugin.sock does not answer yet\n');
  });
  const none = await cli('--socket', '/nonexistent/kvnet.sock', 'status', '--wait', '300ms');
  t.is(none.code, 1);
  t.regex(none.err, /was not running within 0s: cannot reach the kvnet agent at \/nonexistent\/kvnet\.sock/);
});

test('agent: refuses to start without a cluster store unless asked for the embedded one', async (t) => {
  const env = process.env.KVNET_CLUSTER_STORE;
  delete process.env.KVNET_CLUSTER_STORE;
  try {
    const r = await cli('agent', '--cluster-advertise', '198.18.0.1');
    t.is(r.code, 2);
    t.regex(r.err, /^kvnet: no --cluster-store \(or KVNET_CLUSTER_STORE\): give every host the same store.*--single-host\n$/);
    const both = await cli('agent', '--single-host', '--cluster-store', 'etcd://u:secret@10.0.0.5:2379/kvnet', '--cluster-advertise', '198.18.0.1');
    t.is(both.code, 2);
    t.regex(both.err, /--single-host runs on the embedded store; it cannot be combined with --cluster-store etcd:\/\/10\.0\.0\.5:2379\/kvnet\n$/);
    t.false(both.err.includes('secret'), 'credentials are not echoed');
  } finally {
    if (env !== undefined) process.env.KVNET_CLUSTER_STORE = env;
  }
});

test('node ls against an agent of an older version (no states): the table shows "-" for what it does not know', async (t) => {
  await withAgent(() => ({ status: 200, body: [{ name: 'h1', advertise: '198.18.0.1', version: '0.0.9', startedAt: 't' }] }), async (socket) => {
    const r = await cli('--socket', socket, 'node', 'ls');
    t.is(r.code, 0, r.err);
    t.is(r.out, 'NAME   STATE   ADVERTISE    ENDPOINTS   VERSION\nh1     -       198.18.0.1   -           0.0.9\n');
  });
});
