/**
 * One run of the `kvnet` CNI plugin: environment and stdin in, stdout and exit code out. Each verb is
 * one call to the local agent (ADD with a requested prefix length reads the network first):
 *
 * | verb | agent call | success |
 * |---|---|---|
 * | ADD | `POST /v1/cni/attachments` | the result (result.ts) |
 * | DEL | `DELETE /v1/cni/attachments?network&containerId&ifname` | nothing; also when the attachment or network is already gone |
 * | CHECK | `GET /v1/cni/attachments?…` | nothing, when interface, address, MAC and routes are as recorded |
 * | STATUS | `GET /v1/status`, `GET /v1/networks/<network>` | nothing, when the agent is ready and the network exists |
 * | GC | `POST /v1/cni/gc` | nothing; this host's attachments of the configuration not in `cni.dev/valid-attachments` are removed |
 * | VERSION | — | `{cniVersion, supportedVersions}` |
 *
 * A failure prints the CNI error JSON (`{cniVersion, code, msg, details}`) and exits 1.
 */

import { statfsSync } from 'node:fs';
import type { CniAttachmentView } from '@kvnet/agent';
import { AgentClient } from './agent-client.ts';
import { CniError } from './errors.ts';
import { checkUnsupported, parseCommand, parseEnv, parseNetConf, requestedAddress, requestedName, versionOf, type CniEnv, type NetConf } from './netconf.ts';
import { buildResult, checkAttachment, convertResult } from './result.ts';
import { compareVersions, ErrorCode, FIRST_VERSION_WITH, LATEST_VERSION, SUPPORTED_VERSIONS, type CniCommand } from './spec.ts';

/** statfs(2) f_type of a network namespace bind mount (nsfs). */
const NSFS_MAGIC = 0x6e736673;

/** What a run needs from the outside world. */
export interface PluginIo {
  readonly env: NodeJS.ProcessEnv;
  /** Reads all of stdin. */
  readonly stdin: () => Promise<string>;
}

/** What a run prints and how it exits. */
export interface PluginOutcome {
  /** JSON (with a newline) or empty. */
  readonly stdout: string;
  readonly exitCode: 0 | 1;
}

const json = (v: unknown): string => `${JSON.stringify(v)}\n`;

/** Runs one CNI call; never throws. */
export async function runPlugin(io: PluginIo): Promise<PluginOutcome> {
  let version: string = LATEST_VERSION;
  try {
    const command = parseCommand(io.env);
    let stdin: string;
    try {
      stdin = await io.stdin();
    } catch (err) {
      throw new CniError(ErrorCode.IO_FAILURE, `cannot read the network configuration from stdin: ${(err as Error).message}`);
    }
    if (command === 'VERSION') {
      return { stdout: json({ cniVersion: versionOf(stdin), supportedVersions: SUPPORTED_VERSIONS }), exitCode: 0 };
    }
    version = versionOf(stdin); // errors in the configuration answer in its version too
    const conf = parseNetConf(stdin, command);
    version = conf.cniVersion;
    requireVersion(command, conf);
    const env = parseEnv(io.env, command);
    const agent = new AgentClient(conf.socket);
    const out = await VERBS[command](conf, env, agent);
    return { stdout: out === undefined ? '' : json(out), exitCode: 0 };
  } catch (err) {
    const e = err instanceof CniError ? err : new CniError(ErrorCode.AGENT_FAILED, `kvnet plugin failed: ${(err as Error)?.message ?? String(err)}`);
    return { stdout: json(e.toResult(version)), exitCode: 1 };
  }
}

function requireVersion(command: CniCommand, conf: NetConf): void {
  const first = (FIRST_VERSION_WITH as Record<string, string | undefined>)[command];
  if (first && compareVersions(conf.cniVersion, first) < 0) {
    throw new CniError(ErrorCode.INCOMPATIBLE_VERSION, `CNI ${command} needs cniVersion ${first} or later; network configuration ${conf.name} has ${conf.cniVersion}`);
  }
}

type Verb = (conf: NetConf, env: CniEnv, agent: AgentClient) => Promise<unknown>;

const VERBS: Record<Exclude<CniCommand, 'VERSION'>, Verb> = { ADD: add, DEL: del, CHECK: check, STATUS: status, GC: gc };

/** The netns must exist and be a network namespace: else the container is unknown (code 3). */
function requireNetns(netns: string, conf: NetConf): void {
  let type: number;
  try {
    type = Number(statfsSync(netns).type);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CniError(ErrorCode.UNKNOWN_CONTAINER, `CNI_NETNS=${netns} does not exist${code && code !== 'ENOENT' ? ` (${code})` : ''}; nothing was attached to network ${conf.network}`);
  }
  if (type !== NSFS_MAGIC) throw new CniError(ErrorCode.UNKNOWN_CONTAINER, `CNI_NETNS=${netns} is not a network namespace (expected a bind mount of /proc/<pid>/ns/net); nothing was attached to network ${conf.network}`);
}

function attachmentQuery(conf: NetConf, env: CniEnv): string {
  return new URLSearchParams({ network: conf.network, containerId: env.containerId!, ifname: env.ifname! }).toString();
}

async function add(conf: NetConf, env: CniEnv, agent: AgentClient): Promise<unknown> {
  checkUnsupported(conf, env);
  requireNetns(env.netns!, conf);
  const address = requestedAddress(conf, env);
  const name = requestedName(conf, env);
  if (address?.prefixLength !== undefined) {
    const net = await agent.call('GET', `/v1/networks/${encodeURIComponent(conf.network)}`);
    if (net.status !== 200) throw AgentClient.refusal(net, `cannot attach container ${env.containerId} to network ${conf.network}`, conf.socket);
    const subnet = (net.body as { subnet?: string }).subnet ?? '';
    if (subnet.split('/')[1] !== String(address.prefixLength)) {
      throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `requested address ${address.ip}/${address.prefixLength} (${address.from}) does not fit network ${conf.network}: its subnet is ${subnet}`);
    }
  }
  const answer = await agent.call('POST', '/v1/cni/attachments', {
    network: conf.network,
    containerId: env.containerId,
    ifname: env.ifname,
    netns: env.netns,
    netconf: conf.name,
    ...(name !== undefined ? { name } : {}),
    ...(address ? { ip: address.ip } : {}),
  });
  if (answer.status !== 201 && answer.status !== 200) {
    const asked = [address ? `address ${address.ip}` : '', name ? `name ${name}` : ''].filter(Boolean).join(', ');
    throw AgentClient.refusal(answer, `cannot attach container ${env.containerId} to network ${conf.network}${asked ? ` (${asked})` : ''}`, conf.socket);
  }
  const prevResult = conf.prevResult ? convertResult(conf.prevResult, conf.cniVersion) : undefined;
  return buildResult(answer.body as CniAttachmentView, { cniVersion: conf.cniVersion, ifname: env.ifname!, ...(conf.dns ? { dns: conf.dns } : {}), ...(prevResult ? { prevResult } : {}) });
}

async function del(conf: NetConf, env: CniEnv, agent: AgentClient): Promise<unknown> {
  const answer = await agent.call('DELETE', `/v1/cni/attachments?${attachmentQuery(conf, env)}`);
  // 404: the attachment (or its whole network) is already gone, which is what DEL asks for.
  if (answer.status === 204 || answer.status === 404) return undefined;
  throw AgentClient.refusal(answer, `cannot detach container ${env.containerId} (${env.ifname}) from network ${conf.network}`, conf.socket);
}

async function check(conf: NetConf, env: CniEnv, agent: AgentClient): Promise<unknown> {
  if (!conf.prevResult) throw new CniError(ErrorCode.INVALID_NETWORK_CONFIG, `CNI CHECK of container ${env.containerId} on network ${conf.network} needs prevResult (the result of its ADD)`);
  const answer = await agent.call('GET', `/v1/cni/attachments?${attachmentQuery(conf, env)}`);
  if (answer.status === 404) {
    throw new CniError(
      ErrorCode.CHECK_FAILED,
      `container ${env.containerId} (${env.ifname}) is not attached to network ${conf.network}: the kvnet agent has no such attachment`,
      'it was removed (DEL, GC, a dead host reaped, or its network namespace vanished)',
    );
  }
  if (answer.status !== 200) throw AgentClient.refusal(answer, `cannot check container ${env.containerId} on network ${conf.network}`, conf.socket);
  const problems = checkAttachment(answer.body as CniAttachmentView, conf.prevResult, { netns: env.netns!, ifname: env.ifname! });
  if (problems.length > 0) {
    throw new CniError(ErrorCode.CHECK_FAILED, `container ${env.containerId} on network ${conf.network}: ${problems.join('; ')}`);
  }
  return undefined;
}

async function status(conf: NetConf, _env: CniEnv, agent: AgentClient): Promise<unknown> {
  let answer;
  try {
    answer = await agent.call('GET', '/v1/status');
  } catch (err) {
    // The data plane keeps working without the agent, but nothing new is programmed meanwhile.
    if (err instanceof CniError && err.cniCode === ErrorCode.TRY_AGAIN_LATER) {
      throw new CniError(ErrorCode.PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY, err.message, `${err.details}; existing containers keep their connectivity, but endpoints added elsewhere meanwhile are not programmed here`);
    }
    throw err;
  }
  if (answer.status !== 200 || (answer.body as { ready?: unknown }).ready !== true) {
    throw new CniError(ErrorCode.PLUGIN_NOT_AVAILABLE, `the kvnet agent on ${conf.socket} is not ready for network ${conf.network} (starting, stopping, or its store is unreachable)`);
  }
  const net = await agent.call('GET', `/v1/networks/${encodeURIComponent(conf.network)}`);
  if (net.status === 404) throw new CniError(ErrorCode.PLUGIN_NOT_AVAILABLE, `kvnet network ${conf.network} does not exist (network configuration ${conf.name})`);
  if (net.status !== 200) throw AgentClient.refusal(net, `cannot look up network ${conf.network}`, conf.socket);
  return undefined;
}

async function gc(conf: NetConf, _env: CniEnv, agent: AgentClient): Promise<unknown> {
  const answer = await agent.call('POST', '/v1/cni/gc', { network: conf.network, netconf: conf.name, valid: conf.validAttachments });
  if (answer.status !== 200) throw AgentClient.refusal(answer, `CNI GC of network configuration ${conf.name} on network ${conf.network} failed`, conf.socket);
  return undefined;
}
