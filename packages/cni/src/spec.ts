/**
 * The parts of the CNI specification (containernetworking/cni SPEC.md, versions 0.3.0 … 1.1.0) the
 * `kvnet` plugin speaks: versions, the well-known error codes, and the JSON shapes it reads and writes.
 */

/** Every version the plugin accepts in a configuration and answers in (VERSION lists them). */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
/** What VERSION answers when its input names no version it knows. */
export const LATEST_VERSION: CniVersion = '1.1.0';

/** CHECK exists from 0.4.0, STATUS and GC from 1.1.0. */
export const FIRST_VERSION_WITH: Readonly<Record<'CHECK' | 'STATUS' | 'GC', CniVersion>> = { CHECK: '0.4.0', STATUS: '1.1.0', GC: '1.1.0' };

/** The verbs (`CNI_COMMAND`). */
export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
export type CniCommand = (typeof COMMANDS)[number];

/**
 * Error codes: 1-99 are the spec's well-known ones, 100+ this plugin's own (README.md lists when each
 * is used).
 */
export const ErrorCode = {
  /** Incompatible CNI version. */
  INCOMPATIBLE_VERSION: 1,
  /** Unsupported field in the network configuration; the message names key and value. */
  UNSUPPORTED_FIELD: 2,
  /** Container unknown or does not exist (its network namespace is missing). */
  UNKNOWN_CONTAINER: 3,
  /** Invalid or missing environment variables; the message names them. */
  INVALID_ENVIRONMENT: 4,
  /** I/O failure (stdin unreadable, the agent's socket refused us for a reason other than absence). */
  IO_FAILURE: 5,
  /** Failed to decode content (stdin is not JSON, prevResult is not a result). */
  DECODING_FAILURE: 6,
  /** Invalid network configuration (missing or bad fields, a network or address the agent refuses). */
  INVALID_NETWORK_CONFIG: 7,
  /** Try again later: the agent cannot be reached, does not answer, or its store is unavailable. */
  TRY_AGAIN_LATER: 11,
  /** STATUS: cannot service ADD requests. */
  PLUGIN_NOT_AVAILABLE: 50,
  /** STATUS: cannot service ADD, and existing containers may have limited connectivity (the agent is down). */
  PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY: 51,
  /** The address or name asked for is taken, or the network has no free address. */
  CONFLICT: 100,
  /** CHECK: the container's networking differs from its attachment. */
  CHECK_FAILED: 101,
  /** The agent failed (an internal error, the data plane refused). */
  AGENT_FAILED: 102,
} as const;

/** The error JSON a plugin prints on stdout. */
export interface CniErrorResult {
  readonly cniVersion: string;
  readonly code: number;
  readonly msg: string;
  readonly details?: string;
}

export interface CniInterface {
  readonly name: string;
  readonly mac?: string;
  /** 1.1.0 only. */
  readonly mtu?: number;
  readonly sandbox?: string;
}

export interface CniIpConfig {
  /** 0.3.x and 0.4.0 only: "4" or "6". */
  readonly version?: string;
  readonly address: string;
  readonly gateway?: string;
  readonly interface?: number;
}

export interface CniRoute {
  readonly dst: string;
  readonly gw?: string;
}

export interface CniDns {
  readonly nameservers?: readonly string[];
  readonly domain?: string;
  readonly search?: readonly string[];
  readonly options?: readonly string[];
}

/** The ADD success result (0.3.0 … 1.1.0). */
export interface CniResult {
  readonly cniVersion: string;
  readonly interfaces?: readonly CniInterface[];
  readonly ips?: readonly CniIpConfig[];
  readonly routes?: readonly CniRoute[];
  readonly dns?: CniDns;
}

/** Compares two spec versions (`0.4.0` < `1.0.0`). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export function isSupportedVersion(v: unknown): v is CniVersion {
  return typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}
