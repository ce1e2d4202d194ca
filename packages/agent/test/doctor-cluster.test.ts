/**
 * `kvnet doctor` against real agents on three simulated hosts with a real etcd: healthy first, then
 * each thing broken by hand on a host and doctor naming it — a deleted FDB entry, UDP to one peer
 * blocked by iptables inside a host namespace, a shrunk underlay MTU (on the host, and on the path
 * to another host), a sandbox gone, the store stopped — and `node ls` showing the node the VXLAN
 * probe could not reach. Then `node rm` of a host that died. Needs root and etcd.
 *
 * Every break is undone (or its namespace removed) before the next; the cluster harness removes
 * every namespace, process and file of the run, also on failure.
 */

import test, { type ExecutionContext } from 'ava';
import { Cluster, type ClusterHost, type Container, type Endpoint } from '../../../test/support/cluster.ts';
import { run, waitFor } from '../../../test/support/process.ts';

const isRoot = process.getuid?.() === 0;
const haveEtcd = (await run('sh', ['-c', 'command -v etcd'], { allowFailure: true })).code === 0;
const rt = isRoot && haveEtcd ? test.serial : test.skip;
/** Generous bounds for polls; nothing here is timed. */
const CONVERGE_MS = 60_000;
/** The agents repair drift every 30 s: a break can be undone before doctor looks; then it is made again. */
const BREAK_ATTEMPTS = 3;

interface Finding {
  area: string;
  status: string;
  summary: string;
  fix?: string;
  node?: string;
}
interface Report {
  healthy: boolean;
  problems: number;
  findings: Finding[];
}

let c: Cluster;
let h1: ClusterHost;
let h2: ClusterHost;
let h3: ClusterHost;
const containers: Container[] = [];
const eps: Endpoint[] = [];
let nid = '';

async function doctor(h: ClusterHost): Promise<{ code: number; report: Report; text: string }> {
  const j = await c.kvnet(h, 'doctor', '--json');
  const text = await c.kvnet(h, 'doctor');
  return { code: text.code, report: JSON.parse(j.stdout) as Report, text: text.stdout + text.stderr };
}

const failures = (r: Report): Finding[] => r.findings.filter((f) => f.status === 'fail');

function logFindings(t: ExecutionContext, what: string, r: Report): void {
  t.log(`${what}:\n${r.findings.map((f) => `  ${f.status} ${f.area}: ${f.summary}`).join('\n')}`);
}

test.before(async (t) => {
  if (!(isRoot && haveEtcd)) return;
  t.timeout(5 * 60_000);
  c = await Cluster.create({ backend: 'etcd', hosts: 4, ttl: '10s', ttlFor: (n) => (n === 'h4' ? '3s' : undefined), storeOpts: ['kv.timeout=3s'], progress: (m) => t.log(m) });
  [h1, h2, h3] = c.hosts as [ClusterHost, ClusterHost, ClusterHost];
  nid = (await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.97.0.0/24', 'dnet')).trim();
  for (const h of c.hosts) await waitFor(`dnet on ${h.node}`, async () => (await c.networks(h)).some((n) => n.name === 'dnet'), CONVERGE_MS, 200);
  for (const [i, h] of c.hosts.entries()) {
    const ct = await c.addContainer(h, `dc${i + 1}`);
    containers.push(ct);
    eps.push(await c.connect(ct, 'dnet'));
  }
  await waitFor('d1 reaches d2 and d3', async () => (await c.unreachableFrom(containers[0]!, [eps[1]!.ip, eps[2]!.ip])).length === 0, CONVERGE_MS, 500);
});

test.afterEach.always((t) => {
  if (!t.passed && c) t.log(c.diagnostics(30));
});

test.after.always(async () => {
  await c?.teardown();
});

rt('a healthy host: exit 0, store, registration, kernel, MTU and VXLAN to every other node ok', async (t) => {
  const { code, report, text } = await doctor(h1);
  logFindings(t, 'h1 healthy', report);
  t.is(code, 0, text);
  t.true(report.healthy);
  t.deepEqual(failures(report), []);
  const ok = (area: string, re: RegExp): void => {
    t.true(report.findings.some((f) => f.area === area && f.status === 'ok' && re.test(f.summary)), `${area} ok: ${re}`);
  };
  ok('store', /answers \(one read/);
  ok('store', /takes transactions/);
  ok('registration', /registered as h1 \(VTEP 198\.18\.0\.1\)/);
  ok('kernel', /kernel matches the store's view: 1 overlay network\(s\), 1 local endpoint\(s\), 3 peer\(s\)/);
  ok('mtu', /underlay eth0 MTU 1500/);
  for (const n of ['h2', 'h3', 'h4']) ok('vxlan', new RegExp(`node ${n} \\(VTEP 198\\.18\\.0\\.\\d\\) answers over VXLAN: dc1 → dc\\d on network dnet`));
  t.regex(text, /\nhealthy\n$/);
});

rt('a deleted FDB entry is named (and the VXLAN probe to that node fails)', async (t) => {
  const ns = c.overlayNetns(h1, nid);
  const mac = eps[1]!.mac.toLowerCase();
  let seen: Report | undefined;
  for (let attempt = 1; attempt <= BREAK_ATTEMPTS && !seen; attempt++) {
    await run('bridge', ['-n', ns, 'fdb', 'del', mac, 'dev', 'vxlan0', 'self']);
    const { code, report } = await doctor(h1);
    const still = !(await c.kernelPeers(h1, nid)).fdb.some((f) => f.mac === mac);
    if (!still) {
      t.log(`attempt ${attempt}: the agent repaired the entry before doctor finished; breaking it again`);
      continue;
    }
    logFindings(t, 'h1 without the FDB entry of dc2', report);
    t.is(code, 1);
    seen = report;
  }
  t.truthy(seen, 'the break held while doctor ran');
  const f = failures(seen!);
  t.true(f.some((x) => x.area === 'kernel' && x.summary === `network dnet: FDB entry ${mac} → ${h2.address} (dc2 on h2) is missing from vxlan0 in ${c.overlayNetns(h1, nid)}`), 'the entry is named');
  t.true(f.some((x) => x.area === 'vxlan' && x.node === 'h2'), 'h2 does not answer over VXLAN');
  t.false(f.some((x) => x.node === 'h3' || x.node === 'h4'), 'the other nodes answer');
  await run('bridge', ['-n', ns, 'fdb', 'replace', mac, 'dev', 'vxlan0', 'dst', h2.address, 'self', 'permanent']);
  await waitFor('h1 healthy again', async () => (await doctor(h1)).code === 0, CONVERGE_MS, 1000);
});

rt('UDP to one peer blocked inside a host namespace: that node is named unreachable over VXLAN, node ls says so', async (t) => {
  const rule = ['-p', 'udp', '-d', h3.address, '--dport', '4789', '-j', 'DROP'];
  await run('ip', ['netns', 'exec', h1.name, 'iptables', '-w', '5', '-I', 'OUTPUT', ...rule]);
  try {
    const { code, report } = await doctor(h1);
    logFindings(t, 'h1 with UDP to h3 blocked', report);
    t.is(code, 1);
    const f = failures(report);
    t.is(f.length, 1, 'exactly one problem');
    t.is(f[0]!.area, 'vxlan');
    t.regex(f[0]!.summary, new RegExp(`^node h3 \\(VTEP ${h3.address.replaceAll('.', '\\.')}\\) does not answer over VXLAN: dc1 → dc3 \\(${eps[2]!.ip.replaceAll('.', '\\.')}\\) on network dnet; its VTEP answers on the underlay, so UDP 4789 to it \\(or back\\) is blocked`));
    t.regex(f[0]!.fix!, /allow UDP 4789/);
    const nodes = JSON.parse(await c.kvnetOk(h1, 'node', 'ls', '--format', 'json')) as Array<{ name: string; state: string }>;
    t.deepEqual(nodes.map((n) => `${n.name}:${n.state}`), ['h1:alive', 'h2:alive', 'h3:unreachable', 'h4:alive']);
    t.regex(await c.kvnetOk(h1, 'node', 'ls'), /\nh3 +unreachable +198\.18\.0\.3 /);
  } finally {
    await run('ip', ['netns', 'exec', h1.name, 'iptables', '-w', '5', '-D', 'OUTPUT', ...rule], { allowFailure: true });
  }
  const after = await doctor(h1);
  t.is(after.code, 0, 'healthy again once the rule is gone');
  const nodes = JSON.parse(await c.kvnetOk(h1, 'node', 'ls', '--format', 'json')) as Array<{ name: string; state: string }>;
  t.is(nodes.find((n) => n.name === 'h3')?.state, 'alive');
});

rt('a shrunk underlay MTU is named: on this host (eth0), and on the path to another host (full-size packets lost)', async (t) => {
  await run('ip', ['-n', h1.name, 'link', 'set', 'dev', 'eth0', 'mtu', '1400']);
  try {
    const { code, report } = await doctor(h1);
    logFindings(t, 'h1 with eth0 MTU 1400', report);
    t.is(code, 1);
    t.true(failures(report).some((f) => f.area === 'mtu' && f.summary === "network dnet: overlay MTU 1450 + 50 bytes of VXLAN exceeds underlay eth0's MTU 1400: packets over 1350 bytes are dropped"));
  } finally {
    await run('ip', ['-n', h1.name, 'link', 'set', 'dev', 'eth0', 'mtu', '1500']);
  }
  // The underlay switch port of h2 (in the underlay namespace) takes no frame over 1400 bytes.
  const port = 'p2';
  await run('ip', ['-n', c.sim.underlay, 'link', 'set', 'dev', port, 'mtu', '1400']);
  try {
    const { code, report } = await doctor(h1);
    logFindings(t, 'h1 with the path to h2 limited to 1400 bytes', report);
    t.is(code, 1);
    t.true(
      failures(report).some((f) => f.area === 'mtu' && f.node === 'h2' && /^network dnet: full-size packets to node h2 are lost \(small ones pass, dc1 → dc2\): the underlay path MTU is below/.test(f.summary)),
      'the path MTU to h2 is named',
    );
    t.false(failures(report).some((f) => f.node === 'h3'), 'the path to h3 is fine');
  } finally {
    await run('ip', ['-n', c.sim.underlay, 'link', 'set', 'dev', port, 'mtu', '1500']);
  }
});

rt('the store stopped: doctor names it, with what a connection to the server does; readiness and writes say the same', async (t) => {
  await c.stopStore();
  try {
    const seen = await waitFor('doctor on h1 names the store', async () => {
      const d = await doctor(h1);
      return d.report.findings.some((f) => f.area === 'store' && f.status === 'fail') ? d : undefined;
    }, CONVERGE_MS, 500);
    logFindings(t, 'h1 with etcd stopped', seen.report);
    t.is(seen.code, 1);
    const store = failures(seen.report).find((f) => f.area === 'store')!;
    t.regex(store.summary, /^cluster store etcd:\/\/198\.19\.0\.1:\d+\/kvnet is unreachable since \S+Z \(\d+ s\): .* \[198\.19\.0\.1:\d+: connection refused\]$/);
    const status = JSON.parse(await c.kvnetOk(h1, 'status')) as { ready: boolean; store: { state: string; since: string } };
    t.false(status.ready);
    t.is(status.store.state, 'unavailable');
    const t0 = Date.now();
    const create = await c.kvnet(h1, 'network', 'create', 'during-outage');
    t.log(`network create while the store is known down: exit ${create.code} after ${Date.now() - t0} ms (CLI start-up included)`);
    t.is(create.code, 1);
    t.regex(create.stderr, /^kvnet: cluster store etcd:\/\/\S+ is unavailable: unreachable since \S+ \(\d+ s\); last error: /, 'refused by the agent\'s guard, saying since when');
  } finally {
    await c.startStore();
  }
  await waitFor('h1 healthy again', async () => (await doctor(h1)).code === 0, CONVERGE_MS, 1000);
});

rt('a sandbox that is gone is named with the disconnect to run', async (t) => {
  const extra = await c.addContainer(h1, 'dcx');
  const ep = await c.connect(extra, 'dnet');
  await c.removeContainer(extra);
  try {
    const { code, report } = await doctor(h1);
    logFindings(t, 'h1 with dcx deleted', report);
    t.is(code, 1);
    const f = failures(report).find((x) => x.area === 'sandbox');
    t.is(f?.summary, `network dnet: endpoint dcx's sandbox ${extra.path} is gone`);
    t.is(f?.fix, 'if the container is gone, disconnect the endpoint: kvnet network disconnect dnet dcx');
  } finally {
    await c.kvnet(h1, 'network', 'disconnect', 'dnet', ep.name);
  }
});

rt('node rm: refused for a live node unless --force; a node that stopped is removed at once, its names and addresses free', async (t) => {
  const h4 = c.host('h4');
  const live = await c.kvnet(h1, 'node', 'rm', 'h4');
  t.is(live.code, 1);
  t.regex(live.stderr, /^kvnet: node h4 is alive \(advertise 198\.18\.0\.4, agent started \S+\): its agent keeps its record; stop that agent first, or pass --force to remove it anyway\n$/);
  const self = await c.kvnet(h1, 'node', 'rm', 'h1');
  t.is(self.code, 1);
  t.regex(self.stderr, /cannot remove node h1 through its own agent/);

  // A clean stop announces a restart: once its record lapses (TTL 3 s) the node is "restarting", not reaped.
  t.is(await c.stopAgent(h4), 0);
  await waitFor('h4 restarting', async () => {
    const nodes = JSON.parse(await c.kvnetOk(h1, 'node', 'ls', '--format', 'json')) as Array<{ name: string; state: string }>;
    return nodes.find((n) => n.name === 'h4')?.state === 'restarting';
  }, CONVERGE_MS, 200);
  const rm = await c.kvnet(h1, 'node', 'rm', 'h4');
  t.is(rm.code, 0, rm.stderr);
  t.is(rm.stdout, 'h4\n');
  t.false((JSON.parse(await c.kvnetOk(h1, 'node', 'ls', '--format', 'json')) as Array<{ name: string }>).some((n) => n.name === 'h4'), 'node ls no longer lists h4');
  t.false((await c.inspect(h2, 'dnet'))!.endpoints.some((e) => e.node === 'h4'), 'no endpoint of h4 left');
  const again = await c.addContainer(h2, 'dc4b');
  const r = await c.kvnet(h2, 'network', 'connect', 'dnet', '--netns', again.path, '--name', eps[3]!.name, '--ip', eps[3]!.ip);
  t.is(r.code, 0, `h4's endpoint name and address are free: ${r.stderr}`);
  const gone = await c.kvnet(h1, 'node', 'rm', 'h4');
  t.is(gone.code, 1);
  t.regex(gone.stderr, /no such node: h4/);

  // A host killed outright keeps its record until its TTL (10 s): --force removes it now.
  await c.destroyHost(h3);
  t.is((await c.kvnet(h1, 'node', 'rm', 'h3')).code, 1, 'still alive as far as the store knows');
  const forced = await c.kvnet(h1, 'node', 'rm', '--force', 'h3');
  t.is(forced.code, 0, forced.stderr);
  await waitFor("h3's endpoint gone from h2's view", async () => !(await c.inspect(h2, 'dnet'))!.endpoints.some((e) => e.node === 'h3'), CONVERGE_MS, 200);
  t.false((JSON.parse(await c.kvnetOk(h2, 'node', 'ls', '--format', 'json')) as Array<{ name: string }>).some((n) => n.name === 'h3'));
});
