/**
 * `kvnet doctor` in Docker mode, with a real dockerd (Debian's 20.10) on a simulated host and the agent
 * serving the plugin in that dockerd's plugin directory: the plugin socket answers Plugin.Activate, dockerd
 * answers, the kvnet networks are in dockerd; then dockerd stopped, and doctor names it with what to do.
 * Needs root, dockerd, containerd, runc and busybox-static; fails with the reason otherwise.
 */

import test from 'ava';
import { join } from 'node:path';
import { canRunDockerd, startDockerd, type Dockerd } from '../../../test/support/dockerd.ts';
import { kvnetCli, startDockerAgent, waitAgentReady } from '../../../test/support/docker-agents.ts';
import { makeTempDir, removeTempDir, runId, waitFor, type ManagedProcess } from '../../../test/support/process.ts';
import { createSimNetwork, type SimNetwork } from '../../../test/support/sim-hosts.ts';

interface Report {
  healthy: boolean;
  findings: Array<{ area: string; status: string; summary: string; fix?: string }>;
}

const id = runId();
let sim: SimNetwork | undefined;
let dockerd: Dockerd | undefined;
let agent: ManagedProcess | undefined;
let dir = '';
let socket = '';

const doctor = async (): Promise<{ code: number; report: Report }> => {
  const r = await kvnetCli(socket, 'doctor', '--json');
  const text = await kvnetCli(socket, 'doctor');
  return { code: text.code, report: JSON.parse(r.stdout) as Report };
};
const docker = (r: Report) => r.findings.filter((f) => f.area === 'docker');

test.before(async (t) => {
  t.timeout(5 * 60_000);
  if (!(await canRunDockerd())) throw new Error('cannot run: this needs root, dockerd, containerd, runc and busybox-static (scripts/setup.sh installs them)');
  dir = makeTempDir(`doctor-docker-${id}`);
  sim = await createSimNetwork({ hosts: 1, prefix: id });
  // a kvnet Docker host as deploy/README.md sets one up: dockerd's dns is kvnet's resolver (doctor's dns checks)
  dockerd = await startDockerd({ host: sim.hosts[0]!, runId: id, extraArgs: ['--dns', '169.254.53.53'] });
  socket = join(dir, 'h1.sock');
  agent = startDockerAgent({ id, dir, index: 0, host: sim.hosts[0]!, dockerd, apiSocket: socket, store: `local://${dir}/store.db` });
  await waitAgentReady(agent);
});

test.after.always(async (t) => {
  if (agent) {
    await agent.stop(10_000);
    if (!t.passed) t.log(agent.log().slice(-3000));
  }
  await dockerd?.stop();
  await sim?.destroy();
  if (dir) removeTempDir(dir);
});

test.serial('Docker mode: plugin socket, dockerd and mirrored networks are checked; a stopped dockerd is named', async (t) => {
  const created = await kvnetCli(socket, 'network', 'create', '--subnet', '10.98.0.0/24', 'dnet');
  t.is(created.code, 0, created.stderr);
  await waitFor('dnet in dockerd', async () => (await dockerd!.dockerOk('network', 'ls', '--format', '{{.Name}}')).split('\n').includes('dnet'), 60_000, 500);
  const healthy = await doctor();
  t.log(docker(healthy.report).map((f) => `${f.status} ${f.summary}`).join('\n'));
  t.is(healthy.code, 0, JSON.stringify(healthy.report.findings.filter((f) => f.status === 'fail')));
  t.true(docker(healthy.report).some((f) => f.status === 'ok' && /^plugin socket \S+kvnet\.sock answers \((NetworkDriver, IpamDriver|IpamDriver, NetworkDriver)\)$/.test(f.summary)));
  t.true(docker(healthy.report).some((f) => f.status === 'ok' && /^dockerd \d+\.\d+\.\S+ \(API 1\.\d+\) answers on /.test(f.summary)));
  t.false(docker(healthy.report).some((f) => f.status === 'warn'), 'every kvnet network is in dockerd');

  await dockerd!.process.stop(20_000);
  const down = await doctor();
  t.log(docker(down.report).map((f) => `${f.status} ${f.summary}`).join('\n'));
  t.is(down.code, 1);
  const f = docker(down.report).find((x) => x.status === 'fail');
  t.regex(f?.summary ?? '', /^dockerd does not answer on \S+docker\.sock \(.+\): kvnet networks are not mirrored into Docker and container names are not learned$/);
  t.is(f?.fix, 'start dockerd, or run the agent with --docker-socket pointing at it');
  t.true(docker(down.report).some((x) => x.status === 'ok' && /^plugin socket .* answers/.test(x.summary)), 'the plugin socket still answers');
});
