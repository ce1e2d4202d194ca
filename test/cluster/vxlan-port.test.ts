/**
 * The cluster's VXLAN port (issue 15) with real agents on simulated hosts: a cluster started with
 * `--vxlan-port 4790` records it in the store, its containers reach each other across hosts with the
 * VXLAN sockets on 4790 and nothing on 4789; an agent started with another port refuses to start,
 * naming both values, and registers nothing; started without the flag it takes the recorded port.
 * Needs root.
 */

import test from 'ava';
import { agentEntry, Cluster, type ClusterHost, type Container, type Endpoint } from '../support/cluster.ts';
import { run, waitFor, REPO_ROOT } from '../support/process.ts';

const PORT = 4790;
const CONVERGE_MS = 60_000;

let cluster: Cluster;

test.before(async (t) => {
  t.timeout(5 * 60_000);
  if (process.getuid?.() !== 0) throw new Error('the VXLAN port cluster test needs root (network namespaces)');
  cluster = await Cluster.create({ backend: 'local', hosts: 3, startAgents: false, progress: (m) => t.log(m) });
});

test.afterEach.always((t) => {
  if (!t.passed && cluster) t.log(cluster.diagnostics(40));
});

test.after.always(async () => {
  await cluster?.teardown();
});

/** UDP ports bound in a host namespace (`ss -Huln`), e.g. VXLAN sockets. */
async function udpPorts(host: ClusterHost): Promise<number[]> {
  const r = await cluster.exec(host.name, 'ss', '-Hun', '-l');
  return [...r.stdout.matchAll(/:(\d+)\s+\S+:\*/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
}

/** The host's agent command line with `--vxlan-port` set to `port` (or removed). */
function argsWithPort(host: ClusterHost, port: number | undefined): string[] {
  const args = cluster.agentArgs(host);
  return port === undefined ? args : [...args, '--vxlan-port', String(port)];
}

test.serial('a cluster on port 4790: traffic flows, nothing listens on 4789; an agent with --vxlan-port 4789 refuses to start naming both', async (t) => {
  t.timeout(6 * 60_000);
  const c = cluster;
  const [h1, h2, h3] = c.hosts as [ClusterHost, ClusterHost, ClusterHost];
  // h1 is the cluster's first agent: it records the port
  const original = c.agentArgs.bind(c);
  c.agentArgs = (h) => (h === h3 ? original(h) : [...original(h), '--vxlan-port', String(PORT)]);
  try {
    await c.startAgent(h1);
    await c.startAgent(h2);
    t.regex(c.agentLog(h1), /"msg":"recorded the cluster's VXLAN port"/);
    t.is((JSON.parse(await c.kvnetOk(h2, 'status')) as { vxlanPort: number }).vxlanPort, PORT);
    const recorded = (await c.storeEntries()).find((e) => e.key === 'cluster/vxlan-port');
    t.like(JSON.parse(recorded!.value), { port: PORT, setBy: 'h1' });

    const nid = (await c.kvnetOk(h1, 'network', 'create', '--subnet', '10.160.0.0/24', 'p4790')).trim();
    const containers: Container[] = [];
    const eps: Endpoint[] = [];
    for (const [i, h] of [h1, h2].entries()) {
      await waitFor(`p4790 on ${h.node}`, async () => (await c.networks(h)).some((n) => n.name === 'p4790'), CONVERGE_MS, 100);
      const ct = await c.addContainer(h, `p${i + 1}`);
      containers.push(ct);
      eps.push(await c.connect(ct, 'p4790'));
    }
    t.true(await waitFor('p2 pings p1 across hosts', () => c.ping(containers[1]!, eps[0]!.ip), CONVERGE_MS, 200));
    for (const h of [h1, h2]) {
      const ports = await udpPorts(h);
      t.true(ports.includes(PORT), `${h.node} has its VXLAN socket on ${PORT}: ${ports.join(', ')}`);
      t.false(ports.includes(4789), `${h.node} has nothing on 4789: ${ports.join(', ')}`);
      const link = await c.exec(c.overlayNetns(h, nid), 'ip', '-d', '-j', 'link', 'show', 'dev', 'vxlan0');
      t.is((JSON.parse(link.stdout) as Array<{ linkinfo: { info_data: { port: number } } }>)[0]!.linkinfo.info_data.port, PORT);
    }

    // an agent that disagrees refuses to start, naming both values; it registers nothing
    const refused = await run(process.execPath, [...agentEntry(), ...argsWithPort(h3, 4789)], { netns: h3.name, allowFailure: true, timeoutMs: 120_000, cwd: REPO_ROOT });
    t.not(refused.code, 0);
    t.regex(refused.stderr, /--vxlan-port 4789 does not match the cluster's VXLAN port 4790 \(recorded in the store at cluster\/vxlan-port by h1 at [^)]+\): every host of a cluster must use the same UDP port/);
    t.false((await c.nodes(h1)).some((n) => n.name === 'h3'), 'the refused agent is not in node ls');
    t.deepEqual(await udpPorts(h3), [], 'and programmed nothing');

    // without the flag it takes the recorded port and joins the traffic
    await c.startAgent(h3);
    t.is((JSON.parse(await c.kvnetOk(h3, 'status')) as { vxlanPort: number }).vxlanPort, PORT);
    const ct3 = await c.addContainer(h3, 'p3');
    containers.push(ct3);
    await c.connect(ct3, 'p4790');
    t.true(await waitFor('p3 pings p1', () => c.ping(ct3, eps[0]!.ip), CONVERGE_MS, 200));
    t.true((await udpPorts(h3)).includes(PORT));
    const problems = await c.cleanupNetwork('p4790', containers);
    t.deepEqual(problems, []);
  } finally {
    c.agentArgs = original;
  }
});
