/**
 * The seeds' demo with real `kvnet agent --docker-plugin` processes and real dockerds on two simulated
 * hosts sharing one embedded store: `docker network create -d kvnet --ipam-driver kvnet multi` on h1,
 * `multi` listed on h2, containers on both hosts pinging each other, `kvnet network ls` showing it, and
 * `docker network rm` on h1 removing it on h2 too.
 *
 * Needs root, dockerd and busybox-static, and an agent that has `--docker-plugin`; the tests fail
 * with the reason otherwise.
 */

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { canRunDockerd, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { makeTempDir, removeTempDir, runId, waitFor, type ManagedProcess } from '../support/process.ts';
import { agentHasFlags, containerIp, kvnetCli, startDockerAgent, waitAgentReady } from '../support/docker-agents.ts';
import { createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';

const usable = (await agentHasFlags('--docker-plugin')) && (await canRunDockerd());
// Never skipped: on a machine without what this needs, every test fails with the reason.
const rt = test.serial;

const id = runId();
let sim: SimNetwork | undefined;
let dir = '';
const dockerds: Dockerd[] = [];
const agents: ManagedProcess[] = [];
const sockets: string[] = [];

function kvnet(host: number, ...args: string[]) {
  return kvnetCli(sockets[host]!, ...args);
}

function startAgent(i: number): ManagedProcess {
  return startDockerAgent({ id, dir, index: i, host: sim!.hosts[i]!, dockerd: dockerds[i]!, apiSocket: sockets[i]!, store: `local://${dir}/store.db` });
}

test.before(async () => {
  if (!usable) throw new Error('cannot run the Docker tests: this needs root, dockerd, containerd, runc and busybox-static (scripts/setup.sh installs them) and an agent with --docker-plugin');
  if (!usable) return;
  dir = makeTempDir(`docker-agent-${id}`);
  sim = await createSimNetwork({ hosts: 2, prefix: id });
  for (const [i, h] of sim.hosts.entries()) {
    const d = await startDockerd({ host: h, runId: id });
    dockerds.push(d);
    sockets.push(join(dir, `h${i + 1}.sock`));
    agents.push(startAgent(i));
  }
  for (const a of agents) await waitAgentReady(a);
});

test.after.always(async () => {
  for (const d of dockerds) await d.stop().catch((err) => console.error('dockerd teardown:', err));
  for (const a of agents) await a.stop(10_000).catch(() => undefined);
  // the agents leave the data plane in place by design: remove their overlay namespaces with the run's
  await sim?.destroy().catch(() => undefined);
  if (dir) removeTempDir(dir);
});

rt('the seeds\' demo: one docker network on two hosts through two kvnet agents', async (t) => {
  const [d1, d2] = dockerds as [Dockerd, Dockerd];
  const multi = `multi${id}`;
  await d1.dockerOk('network', 'create', '-d', 'kvnet', '--ipam-driver', 'kvnet', '--subnet', '10.214.0.0/24', multi);
  await waitFor(`${multi} listed on h2`, async () => (await d2.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${multi} kvnet`), 60_000, 200);
  const ls = await kvnet(1, 'network', 'ls');
  t.regex(ls.stdout, new RegExp(`${multi}\\s`), 'kvnet network ls on h2 shows it under its Docker name');
  const i2 = JSON.parse(await d2.dockerOk('network', 'inspect', multi))[0];
  t.like(i2.IPAM.Config[0], { Subnet: '10.214.0.0/24', Gateway: '10.214.0.1' });

  await d1.dockerOk('run', '-d', '--name', `c1${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d2.dockerOk('run', '-d', '--name', `c2${id}`, '--network', multi, d2.image, 'sleep', '3600');
  const ipOf = containerIp;
  const ip1 = await ipOf(d1, `c1${id}`);
  const ip2 = await ipOf(d2, `c2${id}`);
  t.not(ip1, ip2);
  t.regex(await d2.dockerOk('exec', `c2${id}`, 'ip', 'link', 'show', 'eth0'), /mtu 1450/);
  // endpoints carry their container names cluster-wide (learned from each host's dockerd)
  await waitFor('container names in kvnet network inspect', async () => {
    const out = (await kvnet(0, 'network', 'inspect', multi)).stdout;
    return out.includes(`c1${id}`) && out.includes(`c2${id}`);
  }, 60_000, 500);
  await waitFor('c2 pings c1', async () => (await d2.docker('exec', `c2${id}`, 'ping', '-c', '1', '-W', '2', ip1)).code === 0, 60_000, 200);
  t.is((await d1.docker('exec', `c1${id}`, 'ping', '-c', '3', '-W', '5', ip2)).code, 0, 'c1 pings c2 back');

  // restarting h1's agent under a running ping between the hosts loses nothing: the data plane stays
  const ping = d2.docker('exec', `c2${id}`, 'ping', '-c', '50', '-i', '0.2', '-W', '2', ip1);
  await new Promise((r) => setTimeout(r, 1_000));
  await agents[0]!.stop(10_000);
  const logLength = readFileSync(agents[0]!.logFile, 'utf8').length;
  agents[0] = startAgent(0);
  await waitAgentReady(agents[0], logLength);
  const pinged = await ping;
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(pinged.stdout);
  t.truthy(m, pinged.stdout);
  t.is(m![1], m![2], `no ping lost across the agent restart: ${m![0]}`);
  // and the restarted agent serves Docker again
  await d1.dockerOk('run', '-d', '--name', `c3${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d1.dockerOk('rm', '-f', `c3${id}`);

  // while the agent is down, Docker's calls fail with an error (no hang), the running containers keep
  // their network, and once it is back the same command works
  await agents[0]!.stop(10_000);
  const down = Date.now();
  const failed = await d1.docker('run', '-d', '--name', `c4${id}`, '--network', multi, d1.image, 'sleep', '3600');
  t.log(`docker run with the agent down failed after ${Date.now() - down} ms: ${failed.stderr.trim()}`);
  t.not(failed.code, 0, 'docker run fails while the plugin is down');
  t.regex(failed.stderr, /kvnet|plugin|connect/i, 'the error names the plugin or the connection');
  t.is((await d2.docker('exec', `c2${id}`, 'ping', '-c', '2', '-W', '5', ip1)).code, 0, 'containers keep their network while the agent is down');
  await d1.docker('rm', '-f', `c4${id}`);
  const logLength2 = readFileSync(agents[0]!.logFile, 'utf8').length;
  agents[0] = startAgent(0);
  await waitAgentReady(agents[0], logLength2);
  await d1.dockerOk('run', '-d', '--name', `c4${id}`, '--network', multi, d1.image, 'sleep', '3600');
  await d1.dockerOk('rm', '-f', `c4${id}`);

  // a network made with `kvnet network create` (no Docker involved) appears in both dockerds and carries containers
  const knet = `knet${id}`;
  const made = await kvnet(1, 'network', 'create', '--subnet', '10.218.0.0/24', knet);
  t.is(made.code, 0, made.stderr);
  for (const d of [d1, d2]) {
    await waitFor(`${knet} listed by ${d.host.name}'s dockerd`, async () => (await d.dockerOk('network', 'ls', '--format', '{{.Name}} {{.Driver}}')).split('\n').includes(`${knet} kvnet`), 60_000, 200);
  }
  await d1.dockerOk('run', '-d', '--name', `k1${id}`, '--network', knet, d1.image, 'sleep', '3600');
  await d2.dockerOk('run', '-d', '--name', `k2${id}`, '--network', knet, d2.image, 'sleep', '3600');
  const k2 = await ipOf(d2, `k2${id}`);
  t.regex(k2, /^10\.218\.0\./);
  await waitFor('k1 pings k2', async () => (await d1.docker('exec', `k1${id}`, 'ping', '-c', '1', '-W', '2', k2)).code === 0, 60_000, 200);
  await d1.dockerOk('rm', '-f', `k1${id}`);
  await d2.dockerOk('rm', '-f', `k2${id}`);
  await waitFor(`${knet} removable`, async () => (await kvnet(0, 'network', 'rm', knet)).code === 0, 60_000, 500);
  for (const d of [d1, d2]) {
    await waitFor(`${knet} gone from ${d.host.name}'s dockerd`, async () => !(await d.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(knet), 60_000, 200);
  }

  await d1.dockerOk('rm', '-f', `c1${id}`);
  await d2.dockerOk('rm', '-f', `c2${id}`);
  await d1.dockerOk('network', 'rm', multi);
  await waitFor(`${multi} gone from h2`, async () => !(await d2.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes(multi), 60_000, 200);
  t.notRegex((await kvnet(0, 'network', 'ls')).stdout, new RegExp(multi));
});
