/**
 * Errors raised by the IPAM layer. Every error has a stable `code` and a `kind` (the same kinds every
 * kvnet package uses); callers branch on those, never on the message or on `instanceof` across
 * packages. Messages name the thing and the value so they can be shown to a person as they are.
 */

import { KvnetError, type ErrorKind } from '@kvnet/store';

export type { ErrorKind };

/** Errors of the IPAM layer. */
export abstract class IpamError extends KvnetError {}

/** A request field is malformed or inconsistent (bad CIDR, gateway outside the subnet, …). */
export class InvalidRequestError extends IpamError {
  readonly code = 'KVNET_IPAM_INVALID_REQUEST';
  readonly kind = 'invalid';
  constructor(
    /** The request field, e.g. `subnet`, `gateway`, `auxAddresses.host1`, `vni`. */
    readonly field: string,
    readonly value: unknown,
    reason: string,
  ) {
    super(`invalid ${field} ${JSON.stringify(value)}: ${reason}`);
  }
}

/** The requested subnet overlaps a pool already in use in the same address space. */
export class PoolOverlapError extends IpamError {
  readonly code = 'KVNET_IPAM_POOL_OVERLAP';
  readonly kind = 'conflict';
  constructor(
    readonly subnet: string,
    readonly addressSpace: string,
    /** Subnet of the pool already in use. */
    readonly existingSubnet: string,
    /** Owner (network id) of that pool. */
    readonly existingOwner: string,
    readonly existingPoolId: string,
  ) {
    super(
      `subnet ${subnet} overlaps pool ${existingSubnet} (network ${existingOwner}) in address space ${addressSpace}`,
    );
  }
}

/** The pool (or the default pools, for a pool request without a subnet) has nothing free left. */
export class PoolExhaustedError extends IpamError {
  readonly code = 'KVNET_IPAM_EXHAUSTED';
  readonly kind = 'exhausted';
  constructor(
    /** The exhausted pool's subnet, or the default pool bases for a subnet request. */
    readonly subnet: string,
    readonly poolId: string | undefined,
    detail: string,
  ) {
    super(`no free ${detail} in ${poolId === undefined ? subnet : `pool ${subnet} (${poolId})`}`);
  }
}

/** A specific address was requested that someone else holds (or that is reserved). */
export class AddressInUseError extends IpamError {
  readonly code = 'KVNET_IPAM_ADDRESS_IN_USE';
  readonly kind = 'conflict';
  constructor(
    readonly address: string,
    readonly poolId: string,
    /** The endpoint id holding it, or `(network)`, `(broadcast)`, `(gateway)`, `(aux:<name>)`. */
    readonly holder: string,
  ) {
    super(`address ${address} in pool ${poolId} is already held by ${holder}`);
  }
}

/** No pool with this id exists. */
export class PoolNotFoundError extends IpamError {
  readonly code = 'KVNET_IPAM_POOL_NOT_FOUND';
  readonly kind = 'not-found';
  constructor(readonly poolId: string) {
    super(`pool ${poolId} does not exist`);
  }
}

/** A pool exists but is held by another owner than the one asking to release it. */
export class PoolOwnerMismatchError extends IpamError {
  readonly code = 'KVNET_IPAM_POOL_OWNER_MISMATCH';
  readonly kind = 'conflict';
  constructor(
    readonly poolId: string,
    readonly owner: string,
    readonly holder: string,
  ) {
    super(`pool ${poolId} is held by network ${holder}, not ${owner}`);
  }
}

/** A requested VNI is held by another network. */
export class VniInUseError extends IpamError {
  readonly code = 'KVNET_IPAM_VNI_IN_USE';
  readonly kind = 'conflict';
  constructor(
    readonly vni: number,
    readonly holder: string,
  ) {
    super(`VXLAN id ${vni} is already held by network ${holder}`);
  }
}

/** A compare-and-swap loop lost the race `attempts` times in a row and gave up. Retrying later may work. */
export class CasGaveUpError extends IpamError {
  readonly code = 'KVNET_IPAM_CAS_GAVE_UP';
  readonly kind = 'unavailable';
  constructor(
    /** What was being done, e.g. `allocate address in pool …`. */
    readonly operation: string,
    readonly attempts: number,
  ) {
    super(`gave up on ${operation} after ${attempts} compare-and-swap attempts lost to concurrent writers`);
  }
}

/** The store holds an IPAM record this code cannot read (written by a newer version, or damaged). */
export class CorruptRecordError extends IpamError {
  readonly code = 'KVNET_IPAM_CORRUPT_RECORD';
  readonly kind = 'internal';
  constructor(
    readonly key: string,
    detail: string,
  ) {
    super(`IPAM record ${key} cannot be read: ${detail}`);
  }
}

/** Duck-typed check that works across package copies. */
export function isIpamError(err: unknown): err is IpamError {
  const code = err instanceof Error ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && code.startsWith('KVNET_IPAM_') && 'kind' in (err as object);
}
