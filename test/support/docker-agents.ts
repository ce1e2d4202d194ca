/**
 * Real `kvnet agent` processes on simulated hosts, as the agent, CLI and Docker tests run them: from the
 * TypeScript sources (tsx), in the host's network namespace, node `h<N>`, kernel names prefixed
 * `<run id><N>`, state and log in the run's temp dir ({@link startSimAgent}); with Docker
 * ({@link startDockerAgent}) also no egress bridge, the plugin socket in that dockerd's own plugin
 * directory and its Engine API socket for names and mirroring.
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

export interface SimAgentOptions {
  /** The run id (names). */
  readonly id: string;
  /** The run's temp dir: state directories and logs go there. */
  readonly dir: string;
  /** 0-based; the node is `h<index + 1>`. */
  readonly index: number;
  readonly host: SimHost;
  /** The agent's own API socket (what `kvnet --socket` talks to). */
  readonly apiSocket: string;
  /** `--cluster-store`. */
  readonly store: string;
  /** `--cluster-advertise` (default `eth0`). */
  readonly advertise?: string;
  /** `--ttl` (default 4s). */
  readonly ttl?: string;
  /** `--gateway-bridge` (default none). */
  readonly gatewayBridge?: string;
  /** Serve /metrics on the default address (default off). */
  readonly metrics?: boolean;
  /** The log file's name in `dir` (default `agent-h<N>.log`; a restart appends to it). */
  readonly logName?: string;
  /** More agent flags, e.g. `--docker-scope global`. */
  readonly extraArgs?: readonly string[];
}

/** Starts the agent (again, after a stop: same state dir, same log file). */
export function startSimAgent(o: SimAgentOptions): ManagedProcess {
  const node = `h${o.index + 1}`;
  return startProcess(`agent-${o.id}-${node}`, process.execPath, [
    '--import', 'tsx', CLI, 'agent',
    '--cluster-store', o.store,
    '--cluster-advertise', o.advertise ?? 'eth0', '--node-name', node, '--state-dir', join(o.dir, `state-${node}`),
    '--socket', o.apiSocket, '--ttl', o.ttl ?? '4s', '--name-prefix', `${o.id}${o.index + 1}`, '--gateway-bridge', o.gatewayBridge ?? 'none',
    ...(o.metrics ? [] : ['--metrics-addr', 'off']),
    ...(o.extraArgs ?? []),
  ], { netns: o.host.name, cwd: REPO_ROOT, logFile: join(o.dir, o.logName ?? `agent-${node}.log`) });
}

export interface DockerAgentOptions extends Omit<SimAgentOptions, 'gatewayBridge'> {
  readonly dockerd: Dockerd;
}

/** {@link startSimAgent} with the Docker plugin in `dockerd`'s plugin directory and its Engine API. */
export function startDockerAgent(o: DockerAgentOptions): ManagedProcess {
  return startSimAgent({ ...o, extraArgs: ['--docker-plugin', join(o.dockerd.pluginDir, 'kvnet.sock'), '--docker-socket', o.dockerd.socket, ...(o.extraArgs ?? [])] });
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
