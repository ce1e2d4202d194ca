/**
 * The demo `npm run demo` runs (via scripts/demo.mjs, after setup): kvnet's main job on three simulated
 * hosts sharing the embedded store, narrated for a newcomer. Uses the test harness
 * (test/support/cluster.ts), so it builds exactly what the multi-host tests build, and removes it all at
 * the end — also on failure or Ctrl-C.
 */

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { Cluster, tail, type ClusterHost, type Container, type Endpoint } from '../test/support/cluster.ts';
import { run, waitFor } from '../test/support/process.ts';

const SUBNET = '10.10.0.0/24';
const NETWORK = 'demo';
/** Every agent's resolver address (`kvnet agent --dns-address`, default). */
const RESOLVER = '169.254.53.53';
/** /etc/netns/<netns>/ directories the demo wrote (removed at the end, also on failure or Ctrl-C). */
const netnsConfigs: string[] = [];
process.on('exit', () => {
  for (const dir of netnsConfigs) rmSync(dir, { recursive: true, force: true });
});
const tty = process.stdout.isTTY;
const bold = (s: string): string => (tty ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string): string => (tty ? `\x1b[2m${s}\x1b[0m` : s);
const out = (s = ''): void => void process.stdout.write(`${s}\n`);
const indent = (s: string, by = '    '): string =>
  s
    .trimEnd()
    .split('\n')
    .map((l) => by + l)
    .join('\n');

let cluster: Cluster | undefined;
let step = 0;
const section = (title: string): void => {
  out();
  out(bold(`== ${++step}. ${title}`));
};

process.once('SIGINT', () => {
  out('\ninterrupted: removing everything the demo created');
  // The harness's own exit hooks (registered later, so they run next) kill the agents and delete
  // every namespace and temp dir synchronously; make sure we exit even if none was registered yet.
  setImmediate(() => process.exit(130));
});

/** Runs `kvnet ARGS` on a host, printing the command and its output; throws on failure. */
async function show(host: ClusterHost, ...args: string[]): Promise<string> {
  out(`  ${dim(`[${host.node}]`)} $ kvnet ${args.join(' ')}`);
  const r = await cluster!.kvnet(host, ...args);
  if (r.stdout.trim()) out(indent(r.stdout));
  if (r.code !== 0) throw new Error(`kvnet ${args.join(' ')} on ${host.node} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

async function main(): Promise<void> {
  out(bold('kvnet: one container network across many Linux hosts, backed by a KV store'));
  out('This demo runs three "hosts" on this machine. Each is a Linux network namespace with its own');
  out('address on a shared underlay bridge, and runs its own kvnet agent, exactly as real hosts would.');

  section('Three hosts, one agent each, sharing the embedded store');
  cluster = await Cluster.create({ backend: 'local', hosts: 3, startAgents: false, ttl: '5s' });
  const c = cluster;
  const [h1, h2, h3] = c.hosts as [ClusterHost, ClusterHost, ClusterHost];
  out(`  hosts:  ${c.hosts.map((h) => `${h.node} ${h.address} (netns ${h.name})`).join(', ')}`);
  out(`  store:  ${c.storeUrl}  (one SQLite file; with a real cluster you would point every agent at Consul, etcd or ZooKeeper)`);
  for (const h of c.hosts) {
    out(`  ${dim(`[${h.node}]`)} $ kvnet agent --cluster-store ${c.storeUrl} --cluster-advertise ${h.address} --node-name ${h.node} ${dim('…')}`);
    await c.startAgent(h);
    out(`         agent ready (pid ${h.agent?.child.pid}, local API socket ${h.socket})`);
  }
  out(dim('  (each host\'s `kvnet` commands below talk to that host\'s own agent through its socket)'));

  section('Cluster membership: every agent registered itself');
  await waitFor('all three nodes', async () => (await c.nodes(h1)).length === 3, 30_000, 200);
  await show(h1, 'node', 'ls');

  section('Create a network on h1');
  const id = (await show(h1, 'network', 'create', '--subnet', SUBNET, NETWORK)).trim();
  out(`  ${dim(`the network (id ${id.slice(0, 12)}…, with its address pool and VXLAN id) is now in the store`)}`);

  section('Every host lists it (each agent watches the store)');
  for (const h of [h2, h3]) {
    await waitFor(`${NETWORK} on ${h.node}`, async () => (await c.networks(h)).some((n) => n.name === NETWORK), 30_000, 100);
  }
  for (const h of c.hosts) await show(h, 'network', 'ls');

  section('Three containers on three hosts join the network');
  out(dim('  a "container" here is a network namespace; `kvnet network connect` plugs it in the way any runtime without Docker would'));
  const containers: Container[] = [];
  const eps: Endpoint[] = [];
  for (const [i, h] of c.hosts.entries()) {
    const ct = await c.addContainer(h, `c${i + 1}`);
    containers.push(ct);
    const stdout = await show(h, 'network', 'connect', NETWORK, '--netns', ct.path, '--name', `c${i + 1}`);
    const ep = JSON.parse(stdout) as Endpoint;
    eps.push(ep);
    out(`  → c${i + 1} on ${h.node} got ${bold(ep.address)}`);
  }

  section('They ping each other across the overlay (VXLAN between the hosts)');
  // Wait quietly until each path answers (agents program remote peers right after the store change).
  for (const [i, from] of containers.entries()) {
    for (const [j, ep] of eps.entries()) {
      if (i === j) continue;
      await waitFor(`c${i + 1} → c${j + 1}`, () => c.ping(from, ep.ip), 30_000, 100);
    }
  }
  for (const [i, from] of containers.entries()) {
    const j = (i + 1) % containers.length;
    const to = eps[j]!;
    out(`  ${dim(`[c${i + 1} on ${from.host.node}]`)} $ ping -c 3 ${to.ip}    ${dim(`# c${j + 1} on ${containers[j]!.host.node}`)}`);
    const r = await c.exec(from.name, 'ping', '-c', '3', '-i', '0.3', '-n', to.ip);
    out(indent(r.stdout));
    if (r.code !== 0) throw new Error(`ping from c${i + 1} to ${to.ip} failed`);
  }

  section('Names across hosts: ping by name');
  out(dim(`  every agent runs a small DNS resolver at ${RESOLVER} (link-local), reached over each container's kvnet interface;`));
  out(dim('  a netns user sets it the way `ip netns exec` expects: /etc/netns/<netns>/resolv.conf (Docker users: daemon.json "dns")'));
  for (const ct of containers) {
    const dir = `/etc/netns/${ct.name}`;
    mkdirSync(dir, { recursive: true });
    netnsConfigs.push(dir);
    writeFileSync(`${dir}/resolv.conf`, `nameserver ${RESOLVER}\n`);
  }
  out(`  $ echo nameserver ${RESOLVER} > /etc/netns/<netns>/resolv.conf    ${dim('# for each container')}`);
  for (const [i, from] of containers.entries()) {
    const j = (i + 1) % containers.length;
    const name = `c${j + 1}`;
    out(`  ${dim(`[c${i + 1} on ${from.host.node}]`)} $ ip netns exec ${from.name} ping -c 2 ${name}    ${dim(`# ${name} is on ${containers[j]!.host.node}`)}`);
    const r = await run('ip', ['netns', 'exec', from.name, 'ping', '-c', '2', '-i', '0.3', name], { allowFailure: true, timeoutMs: 30_000 });
    out(indent(r.stdout || r.stderr));
    if (r.code !== 0) throw new Error(`ping ${name} by name from c${i + 1} failed: ${r.stderr.trim()}`);
  }

  section('Inspect the network (from h3)');
  await show(h3, 'network', 'inspect', NETWORK);

  section('Clean up');
  for (const [i, ep] of eps.entries()) await show(containers[i]!.host, 'network', 'disconnect', NETWORK, ep.name);
  await show(h1, 'network', 'rm', NETWORK);
}

let failed = false;
try {
  await main();
} catch (err) {
  failed = true;
  process.stderr.write(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  if (cluster) {
    for (const h of cluster.hosts) process.stderr.write(`--- ${h.node} agent log (last lines) ---\n${tail(cluster.agentLog(h), 15)}\n`);
  }
} finally {
  for (const dir of netnsConfigs) rmSync(dir, { recursive: true, force: true });
  if (cluster) {
    out(dim('  stopping the agents, deleting the hosts, containers and the store file'));
    await cluster.teardown();
  }
}
out(failed ? 'the demo did not complete; everything it created has been removed' : bold('done: everything the demo created has been removed'));
process.exitCode = failed ? 1 : 0;
