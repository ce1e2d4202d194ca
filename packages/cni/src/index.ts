/**
 * @packageDocumentation
 * The `kvnet` CNI plugin (spec 0.3.0 … 1.1.0): podman, containerd/nerdctl, Nomad and other CNI runtimes
 * attach containers to kvnet networks through the local agent. `src/main.ts` is the executable;
 * this module exposes its parts for tests and the benchmark.
 */

export { AgentClient, AGENT_CALL_TIMEOUT_MS } from './agent-client.ts';
export { CniError } from './errors.ts';
export { DEFAULT_SOCKET, KNOWN_CNI_ARGS, parseCniArgs, parseEnv, parseNetConf, requestedAddress, requestedName, type CniEnv, type NetConf, type RequestedAddress } from './netconf.ts';
export { runPlugin, type PluginIo, type PluginOutcome } from './plugin.ts';
export { buildResult, checkAttachment, convertResult, type ResultOptions } from './result.ts';
export { compareVersions, ErrorCode, LATEST_VERSION, SUPPORTED_VERSIONS, type CniErrorResult, type CniResult, type CniVersion } from './spec.ts';
