/**
 * Errors raised or reported by the data plane. Every error has a stable `code` and a `kind` (the same
 * kinds every kvnet package uses) and names the object it is about: network id, endpoint id, peer,
 * interface, network namespace. Callers branch on `code`/`kind`, never on the message.
 *
 * `apply()` does not throw these for a single object: it reports them in `ApplyReport.errors` and still
 * applies everything else. It throws only when it cannot work at all (bad config, aborted).
 */

// Only the error module: the data plane needs the shared error base, not the store's backends.
import { KvnetError, type ErrorKind } from '@kvnet/store/errors';

export type { ErrorKind };

/** The kernel object (or desired object) an error is about. Ids are the full ids. */
export interface DataplaneObject {
  readonly kind: 'network' | 'endpoint' | 'peer' | 'gateway-bridge' | 'host' | 'netns' | 'config';
  /** Network id. */
  readonly network?: string;
  /** Endpoint id. */
  readonly endpoint?: string;
  /** Peer IP address. */
  readonly peer?: string;
  /** Interface concerned, e.g. `vxlan0`, `eth0`, `docker_gwbridge`. */
  readonly ifname?: string;
  /** Network namespace: a name under /run/netns or an absolute path. */
  readonly netns?: string;
}

const SHORT_ID_CHARS = 12;

/** "endpoint 3f2a… of network 9c1b…" — how messages name an object. */
export function describeObject(object: DataplaneObject): string {
  const id = (s: string): string => (s.length > SHORT_ID_CHARS ? s.slice(0, SHORT_ID_CHARS) : s);
  const net = object.network ? `network ${id(object.network)}` : '';
  switch (object.kind) {
    case 'network':
      return net || 'network';
    case 'endpoint':
      return `endpoint ${id(object.endpoint ?? '?')}${net ? ` of ${net}` : ''}`;
    case 'peer':
      return `peer ${object.peer ?? '?'}${net ? ` of ${net}` : ''}`;
    case 'gateway-bridge':
      return `gateway bridge ${object.ifname ?? ''}`.trim();
    case 'host':
      return `host namespace ${object.netns ?? '(own)'}`;
    case 'netns':
      return `netns ${object.netns ?? '(own)'}`;
    case 'config':
      return 'data plane config';
  }
}

export abstract class DataplaneError extends KvnetError {
  /** The object the error is about. */
  abstract readonly object: DataplaneObject;
}

/** The `DataplaneConfig` passed to the constructor cannot be used. Thrown, never reported. */
export class InvalidConfigError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_INVALID_CONFIG';
  readonly kind = 'invalid';
  readonly object: DataplaneObject = { kind: 'config' };
  constructor(
    readonly field: string,
    readonly value: unknown,
    reason: string,
  ) {
    super(`invalid data plane config ${field}=${JSON.stringify(value)}: ${reason}`);
  }
}

/**
 * A desired object the planner refuses before touching the kernel: a malformed id, address or MAC, an
 * interface name the kernel would refuse (longer than 15 bytes), a duplicate. The object is left as it
 * is in the kernel; everything else is applied.
 */
export class InvalidDesiredStateError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_INVALID_DESIRED_STATE';
  readonly kind = 'invalid';
  constructor(
    readonly object: DataplaneObject,
    readonly field: string,
    readonly value: unknown,
    readonly reason: string,
  ) {
    super(`${describeObject(object)}: ${field} ${JSON.stringify(value)} ${reason}`);
  }
}

/** Two desired objects want the same thing (peer IP, MAC, interface name); the first one keeps it. */
export class DesiredConflictError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_CONFLICT';
  readonly kind = 'conflict';
  constructor(
    readonly object: DataplaneObject,
    readonly reason: string,
  ) {
    super(`${describeObject(object)}: ${reason}`);
  }
}

/** A sandbox path that is not (or no longer) a network namespace; its endpoint is not created. */
export class SandboxNotFoundError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_SANDBOX_NOT_FOUND';
  readonly kind = 'not-found';
  constructor(
    readonly object: DataplaneObject,
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${describeObject(object)}: sandbox ${path} ${reason}`);
  }
}

/** The kernel refused one change; `reason` is iproute2's text (the kernel's extack message or errno). */
export class KernelRefusedError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_KERNEL_REFUSED';
  readonly kind: ErrorKind;
  constructor(
    readonly object: DataplaneObject,
    /** What was being done, e.g. "create vxlan0 (VNI 4097, UDP port 4789)". */
    readonly action: string,
    /** Where: a netns name, path, or "(own)". */
    readonly netns: string,
    readonly reason: string,
    /** The iproute2 batch line that failed. */
    readonly command: string,
  ) {
    super(`${describeObject(object)}: cannot ${action} in netns ${netns}: ${reason}`);
    this.kind = kindOfKernelReason(reason);
  }
}

/** A command (ip, bridge, iptables, sysctl) could not run, crashed, timed out or answered garbage. */
export class CommandFailedError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_COMMAND_FAILED';
  readonly kind = 'unavailable';
  constructor(
    readonly object: DataplaneObject,
    readonly command: string,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${describeObject(object)}: ${command} failed: ${detail}`, options);
  }
}

/**
 * A network's MTU is more than this host's underlay carries (underlay MTU − VXLAN overhead). Reported
 * in `ApplyReport.warnings`, not refused: the network's MTU is the same on every host, and the network
 * still works for packets that fit; the agent says so (log, metric) instead of letting large packets
 * vanish on the way.
 */
export class MtuExceedsUnderlayError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY';
  readonly kind = 'invalid';
  constructor(
    readonly object: DataplaneObject,
    /** The network's MTU. */
    readonly mtu: number,
    /** The largest MTU this host's underlay carries. */
    readonly limit: number,
    reason: string,
  ) {
    super(`${describeObject(object)}: MTU ${mtu} ${reason}; packets larger than ${limit} bytes may be fragmented or dropped on the underlay`);
  }
}

/** No block of the gateway pool is free of the host's routes. */
export class GatewayPoolExhaustedError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_GATEWAY_POOL_EXHAUSTED';
  readonly kind = 'exhausted';
  constructor(
    readonly object: DataplaneObject,
    readonly pool: string,
    readonly tried: number,
  ) {
    super(`${describeObject(object)}: no free subnet in pool ${pool} (${tried} blocks tried, all overlap a host route)`);
  }
}

function kindOfKernelReason(reason: string): ErrorKind {
  if (/exists|in use|busy/i.test(reason)) return 'conflict';
  if (/no such|cannot find|not found/i.test(reason)) return 'not-found';
  if (/no buffer space|no space/i.test(reason)) return 'exhausted';
  if (/invalid|not supported|out of range/i.test(reason)) return 'invalid';
  return 'internal';
}

/** Duck-typed check that works across package copies. */
export function isDataplaneError(err: unknown): err is DataplaneError {
  return err instanceof Error && typeof (err as { code?: unknown }).code === 'string' && 'object' in err;
}

/** `destroyAll` could not remove everything; `errors` lists what is left and why. */
export class TeardownIncompleteError extends DataplaneError {
  readonly code = 'KVNET_DATAPLANE_TEARDOWN_INCOMPLETE';
  readonly kind = 'internal';
  readonly object: DataplaneObject;
  constructor(
    readonly prefix: string,
    readonly errors: readonly DataplaneError[],
  ) {
    super(`removing the objects of prefix ${prefix} left ${errors.length} behind: ${errors.map((e) => e.message).join('; ')}`);
    this.object = { kind: 'host' };
  }
}
