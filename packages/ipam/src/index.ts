/**
 * @packageDocumentation
 * kvnet's cluster-wide IPAM: address pools, addresses and VXLAN ids allocated with compare-and-swap
 * on the cluster store. Layout and concurrency rules: `packages/ipam/README.md`.
 *
 * ```ts
 * const ipam = new Ipam({ store });
 * const pool = await ipam.requestPool({ owner: networkId });             // next free 10.x.y.0/24
 * const a = await ipam.allocateAddress(pool.id, { owner: endpointId }); // { address: '10.0.0.2/24', ip: '10.0.0.2', … }
 * const vni = await ipam.allocateVni({ network: networkId });
 * ```
 */

export { Ipam } from './ipam.ts';
export {
  DEFAULT_ADDRESS_SPACE,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_POOL6_SIZE,
  DEFAULT_POOLS,
  IPV6_MAX_SUBNET_PREFIX,
  VNI_MAX,
  VNI_MIN,
  type AddressAllocation,
  type AddressRequest,
  type IpamOptions,
  type IpamStats,
  type PoolInfo,
  type PoolRequest,
  type VniRequest,
} from './types.ts';
export {
  AddressInUseError,
  CasGaveUpError,
  CorruptRecordError,
  InvalidRequestError,
  IpamError,
  PoolExhaustedError,
  PoolNotFoundError,
  PoolOverlapError,
  PoolOwnerMismatchError,
  VniInUseError,
  isIpamError,
  type ErrorKind,
} from './errors.ts';
