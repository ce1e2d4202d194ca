/**
 * Real `kvnet agent --docker-plugin` processes beside the real dockerds of simulated hosts, as the tests
 * under test/docker run them: from the TypeScript sources (tsx), in the host's network namespace, node
 * `h<N>`, kernel names prefixed `<run id><N>`, no egress bridge, the plugin socket in that dockerd's own
 * plugin directory and its Engine API socket for names and mirroring.
 *
 * ```ts
 * const agent = startDockerAgent({ id, dir, index: 0, host: sim.hosts[0], dockerd: d1, apiSocket: join(dir, 'h1.sock'), store: `local://${dir}/store.db` });
 * await waitAgentReady(agent);
 * await kvnetCli(join(dir, 'h1.sock'), 'network', 'ls');
 * ```
 */

import { join } from 'node:path';
import type { Dockerd } from './dockerd.ts';
import { run, startProcess, waitFor, REPO_ROOT, type ManagedProcess, type RunResult } from './process.ts';
import type { SimHost } from './sim-hosts.ts';

const CLI = join(REPO_ROOT, 'packages/cli/src/main.ts');
const READY_TIMEOUT_MS = 90_000;
const CLI_TIMEOUT_MS = 120_000;

/** True when `kvnet agent --help` lists every flag (the tests fail with the reason otherwise). */
export async function agentHasFlags(...flags: string[]): Promise<boolean> {
  const help = (await run(process.execPath, ['--import', 'tsx', CLI, 'agent', '--help'], { allowFailure: true, timeoutMs: 60_000 })).stdout;
  return flags.every((f) => help.includes(f));
}

export interface DockerAgentOptions {
  /** The run id (names). */
  readonly id: string;
  /** The run's temp dir: state directories and logs go there. */
  readonly dir: string;
  /** 0-based; the node is `h<index + 1>`. */
  readonly index: number;
  readonly host: SimHost;
  readonly dockerd: Dockerd;
  /** The agent's own API socket (what `kvnet --socket` talks to). */
  readonly apiSocket: string;
  /** `--cluster-store`. */
  readonly store: string;
  /** More agent flags, e.g. `--docker-scope global`. */
  readonly extraArgs?: readonly string[];
}

/** Starts the agent (again, after a stop: same state dir, same log file). */
export function startDockerAgent(o: DockerAgentOptions): ManagedProcess {
  const node = `h${o.index + 1}`;
  return startProcess(`agent-${o.id}-${node}`, process.execPath, [
    '--import', 'tsx', CLI, 'agent',
    '--cluster-store', o.store,
    '--cluster-advertise', 'eth0', '--node-name', node, '--state-dir', join(o.dir, `state-${node}`),
    '--socket', o.apiSocket, '--ttl', '4s', '--name-prefix', `${o.id}${o.index + 1}`, '--gateway-bridge', 'none', '--metrics-addr', 'off',
    '--docker-plugin', join(o.dockerd.pluginDir, 'kvnet.sock'), '--docker-socket', o.dockerd.socket,
    ...(o.extraArgs ?? []),
  ], { netns: o.host.name, cwd: REPO_ROOT, logFile: join(o.dir, `agent-${node}.log`) });
}

/** Waits for "agent ready" in the log after `afterLogLength` characters (a restart appends to the same log). */
export async function waitAgentReady(a: ManagedProcess, afterLogLength = 0, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  await waitFor(`${a.name} ready`, () => {
    if (a.child.exitCode !== null) throw new Error(a.log());
    return a.log().slice(afterLogLength).includes('"msg":"agent ready"');
  }, timeoutMs, 100);
}

/** The kvnet CLI against one agent; resolves whatever the exit code. */
export function kvnetCli(apiSocket: string, ...args: string[]): Promise<RunResult> {
  return run(process.execPath, ['--import', 'tsx', CLI, '--socket', apiSocket, ...args], { allowFailure: true, timeoutMs: CLI_TIMEOUT_MS });
}

/** The IPv4 address of a container's eth0. */
export async function containerIp(d: Dockerd, container: string): Promise<string> {
  const out = await d.dockerOk('exec', container, 'ip', '-o', '-4', 'addr', 'show', 'eth0');
  const m = /inet (\S+)\//.exec(out);
  if (!m) throw new Error(`container ${container} on ${d.host.name} has no IPv4 address on eth0: ${out}`);
  return m[1]!;
}
