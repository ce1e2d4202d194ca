/**
 * The plugin's one error class: a CNI error code for the runtime, a message for people that names the
 * network and the value, and details (the agent's own code, what to do).
 */

import { KvnetError, type ErrorKind } from '@kvnet/store/errors';
import { ErrorCode, type CniErrorResult } from './spec.ts';

function kindOf(cniCode: number): ErrorKind {
  switch (cniCode) {
    case ErrorCode.TRY_AGAIN_LATER:
    case ErrorCode.PLUGIN_NOT_AVAILABLE:
    case ErrorCode.PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY:
    case ErrorCode.IO_FAILURE:
      return 'unavailable';
    case ErrorCode.UNKNOWN_CONTAINER:
      return 'not-found';
    case ErrorCode.CONFLICT:
      return 'conflict';
    case ErrorCode.AGENT_FAILED:
    case ErrorCode.CHECK_FAILED:
      return 'internal';
    default:
      return 'invalid';
  }
}

/** Every failure the plugin reports; the edge (plugin.ts) prints it as CNI error JSON. */
export class CniError extends KvnetError {
  readonly code = 'KVNET_CNI_ERROR';
  readonly kind: ErrorKind;

  constructor(
    /** The CNI error code (spec.ts `ErrorCode`). */
    readonly cniCode: number,
    message: string,
    /** The longer explanation: where it came from, what to do. */
    readonly details?: string,
  ) {
    super(message);
    this.kind = kindOf(cniCode);
  }

  /** The error JSON for `cniVersion`. */
  toResult(cniVersion: string): CniErrorResult {
    return { cniVersion, code: this.cniCode, msg: this.message, ...(this.details ? { details: this.details } : {}) };
  }
}
