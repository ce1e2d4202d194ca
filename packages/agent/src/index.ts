/**
 * @packageDocumentation
 * The per-host kvnet agent: membership, watch-driven reconciliation, dead-node reaping, the local
 * API and metrics. `kvnet agent` (packages/cli) runs one {@link Agent}.
 *
 * ```ts
 * const agent = new Agent({ ...config, logger });
 * await agent.start();   // registered, synced, reconciled, API listening
 * await agent.stop();    // data plane and node record left in place
 * ```
 */

export { Agent, AGENT_VERSION, type AgentDeps, type AgentOptions } from './agent.ts';
export type { AgentContext, Face, NodeIdentity } from './context.ts';
export * from './config.ts';
export { AgentError, InvalidConfigError, InvalidInputError, NameConflictError, NetworkInUseError, NodeConflictError, NotFoundError } from './errors.ts';
export type { EndpointView, NetworkView } from './network-service.ts';
export type { NodeProbe, NodeState, NodeView } from './nodes.ts';
export type { CheckArea, CheckStatus, DoctorCheck, DoctorFinding, DoctorReport } from './doctor/index.ts';
export type { StoreHealthReport, StoreState } from './cluster-mirror.ts';
export { BUILD_INFO, type BuildInfo } from './version.ts';
export { computeDesiredState } from './desired-state.ts';
export { chooseReaper, DeadNodeTracker } from './reaper.ts';
export { DockerDriver, DockerEngine, DockerPluginServer, KVNET_ADDRESS_SPACE, StoreDockerBackend, type DockerBackend, type DockerFace } from './docker/index.ts';
export { listenUnix, socketAnswers, unixRequest, UnixHttpError, MAX_BODY_BYTES } from './unix-http.ts';
export { CniAttachments, HOST_ROUTE_PROTO, startCni, type CniAttachmentView, type CniGcResult, type CniNetworkInfo, type SandboxInterface, type SandboxRoute, type SandboxState } from './cni/index.ts';
