/**
 * Errors raised by the agent's own logic (the API edge maps every error with a `kind` to an HTTP
 * status). Store, IPAM and data plane errors pass through unchanged: they already carry a `code`, a
 * `kind` and a message that names the thing and the value.
 */

// The error module only: config.ts (loaded by every CLI command) imports this file.
import { KvnetError } from '@kvnet/store/errors';

export { errorCode, errorKind } from '@kvnet/store/errors';

/** Errors of the agent's own logic. */
export abstract class AgentError extends KvnetError {}

/** Bad input to an API call: the message names the field and the value. */
export class InvalidInputError extends AgentError {
  readonly code = 'KVNET_INVALID_INPUT';
  readonly kind = 'invalid';
}

/** A network or endpoint that does not exist. */
export class NotFoundError extends AgentError {
  readonly code = 'KVNET_NOT_FOUND';
  readonly kind = 'not-found';
}

/** A name already taken cluster-wide (`network with name X already exists`). */
export class NameConflictError extends AgentError {
  readonly code = 'KVNET_NAME_CONFLICT';
  readonly kind = 'conflict';
}

/** A record changed between read and write (another writer won the compare-and-swap); trying again may succeed. */
export class ConcurrentChangeError extends AgentError {
  readonly code = 'KVNET_CONCURRENT_CHANGE';
  readonly kind = 'conflict';
}

/** A network that still has endpoints, or one that is being removed. */
export class NetworkInUseError extends AgentError {
  readonly code = 'KVNET_NETWORK_IN_USE';
  readonly kind = 'conflict';
}

/** The node name or advertise address is held by another live agent. */
export class NodeConflictError extends AgentError {
  readonly code = 'KVNET_NODE_CONFLICT';
  readonly kind = 'conflict';
}

/** Agent configuration (flags) that cannot be used. */
export class InvalidConfigError extends AgentError {
  readonly code = 'KVNET_INVALID_CONFIG';
  readonly kind = 'invalid';
}

/** The data plane could not plumb an endpoint; the store records were rolled back. */
export class PlumbingError extends AgentError {
  readonly code = 'KVNET_PLUMBING_FAILED';
  readonly kind = 'internal';
}

/** The agent is shutting down or not yet ready. */
export class AgentNotReadyError extends AgentError {
  readonly code = 'KVNET_AGENT_NOT_READY';
  readonly kind = 'unavailable';
}

/** Another live agent holds the state dir (its lock names the pid). */
export class StateDirLockedError extends AgentError {
  readonly code = 'KVNET_STATE_DIR_LOCKED';
  readonly kind = 'conflict';
}

/** `kvnet node rm` of a node whose agent still holds its record (without `--force`). */
export class NodeAliveError extends AgentError {
  readonly code = 'KVNET_NODE_ALIVE';
  readonly kind = 'conflict';
}

/**
 * This agent's settings disagree with what the cluster recorded (its `--vxlan-port` is not the
 * cluster's port): it refuses to start rather than send traffic nobody receives.
 */
export class ClusterSettingMismatchError extends AgentError {
  readonly code = 'KVNET_CLUSTER_SETTING_MISMATCH';
  readonly kind = 'conflict';
}
