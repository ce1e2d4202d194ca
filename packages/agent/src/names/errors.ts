/**
 * Errors of the names face. Each has a stable `code` and a `kind` (the agent's API edge maps kinds to
 * HTTP statuses), and a message that names the thing and the value. Bad settings (an address or an
 * upstream that is not one) are the agent's `InvalidConfigError`.
 */

import { AgentError } from '../errors.ts';

/** The resolver process cannot be reached, started, or answered with an error. */
export class ResolverUnavailableError extends AgentError {
  readonly code = 'KVNET_DNS_RESOLVER_UNAVAILABLE';
  readonly kind = 'unavailable';
}

/** A name table that is not one (wrong format version, missing fields). */
export class InvalidNameTableError extends AgentError {
  readonly code = 'KVNET_DNS_INVALID_TABLE';
  readonly kind = 'invalid';
}

/** A listener could not be opened in a namespace (the namespace is gone, the port is taken, nsenter failed). */
export class ListenerError extends AgentError {
  readonly code = 'KVNET_DNS_LISTENER_FAILED';
  readonly kind = 'internal';
}
