/**
 * The IPAM contract: address spaces, pools, addresses and VXLAN ids, handed out concurrently by every
 * agent of a cluster with nothing but the store's compare-and-swap to keep them unique. The store
 * layout behind it is described in the package README.
 */

import type { KVStore } from '@kvnet/store';
import type { Logger } from 'pino';

export interface IpamOptions {
  /** The cluster store (its URL prefix is the cluster prefix; IPAM keys live under `ipam/`). */
  store: KVStore;
  /** pino logger; a child `{component: 'ipam'}` is used. Silent when omitted. */
  logger?: Logger;
  /**
   * Where IPv4 pools requested without a subnet come from: each `base` cut into subnets of prefix length
   * `size`, taken in order, skipping any that overlaps a pool of the same address space.
   * Default `[{ base: '10.0.0.0/8', size: 24 }]` (Docker's global default). IPv4 only.
   */
  defaultPools?: Array<{ base: string; size: number }>;
  /**
   * Where IPv6 pools requested without a subnet (`v6: true`) come from, like `defaultPools`; `size` must
   * be 64 … 126 (see {@link IPV6_MAX_SUBNET_PREFIX}). Default: one ULA /48 per cluster (RFC 4193: `fd` +
   * a random 40-bit global id, chosen by the first such request and recorded in the store, so every
   * agent uses the same one) cut into /64s — 65 536 networks.
   */
  defaultPools6?: Array<{ base: string; size: number }>;
  /**
   * Attempts of one compare-and-swap loop before it fails with `CasGaveUpError`. Each lost race is
   * followed by a full-jitter exponential backoff. Default {@link DEFAULT_MAX_ATTEMPTS}.
   */
  maxAttempts?: number;
}

/** Default number of attempts of a CAS loop. */
export const DEFAULT_MAX_ATTEMPTS = 64;
export const DEFAULT_ADDRESS_SPACE = 'global';
export const DEFAULT_POOLS: ReadonlyArray<{ base: string; size: number }> = [{ base: '10.0.0.0/8', size: 24 }];
/** Prefix length of each default IPv6 pool cut from the cluster's ULA /48. */
export const DEFAULT_POOL6_SIZE = 64;
/**
 * The shortest prefix an IPv6 pool may have without an ip-range: /64, the subnet size every IPv6 host
 * stack expects. A larger subnet (say a /48 typed where a pool base was meant) is refused unless an
 * ip-range of /64 or smaller bounds where dynamic addresses come from; specific addresses may then lie
 * anywhere in the subnet (the address shards are sparse, so the subnet's size costs nothing).
 */
export const IPV6_MAX_SUBNET_PREFIX = 64;
/** VXLAN ids below 256 are left alone (Docker's overlay starts at 256 too). */
export const VNI_MIN = 256;
export const VNI_MAX = 16_777_215;

export interface PoolRequest {
  /** The network id requesting the pool. A retried request by the same owner returns the same pool. */
  owner: string;
  /** Default `'global'`. Pools only overlap-check against pools of the same address space. */
  addressSpace?: string;
  /**
   * CIDR. Omitted: the next free subnet of the default pools (IPv4), or with `v6: true` of the default
   * IPv6 pools (the cluster's ULA /48 in /64s). An IPv6 subnet larger than /64 needs an `ipRange` of /64
   * or smaller.
   */
  subnet?: string;
  /** CIDR inside `subnet` that dynamic addresses come from. */
  ipRange?: string;
  /** Gateway address (bare IP or `ip/len`), inside the subnet. Default: first usable address. */
  gateway?: string;
  /** Named addresses inside the subnet reserved for other hosts; never handed out. */
  auxAddresses?: Record<string, string>;
  /** Must be true for an IPv6 subnet; without a subnet it asks for a default IPv6 pool. */
  v6?: boolean;
}

export interface PoolInfo {
  /** Opaque id: safe as a store key segment and as Docker's PoolID. */
  id: string;
  addressSpace: string;
  family: 4 | 6;
  /** Canonical CIDR (host bits cleared). */
  subnet: string;
  /** `ip/prefixlen`. */
  gateway: string;
  /** Canonical CIDR, when set. */
  ipRange?: string;
  /** name → bare IP. */
  auxAddresses: Record<string, string>;
  /** Network id that requested it. */
  owner: string;
  /** Set while `releasePool` is in progress (or was interrupted): no address can be allocated in it. */
  releasing?: boolean;
}

export interface AddressRequest {
  /** Endpoint id. A retry by the same owner returns the address it already holds in that pool. */
  owner: string;
  /** A specific address (bare IP or `ip/len`); omitted: next free dynamic address. */
  address?: string;
}

export interface AddressAllocation {
  /** `ip/prefixlen` of the pool. */
  address: string;
  /** Bare IP. */
  ip: string;
  poolId: string;
  owner: string;
}

export interface VniRequest {
  /** Network id; one VNI per network (a retry returns the same VNI). */
  network: string;
  /** A specific VNI (from `vxlanid_list`); refused with `VniInUseError` if another network holds it. */
  requested?: number;
}

export interface IpamStats {
  /** Compare-and-swap attempts that lost a race and were retried, since construction. */
  casRetries: number;
  /** Address allocations that committed, since construction. */
  allocations: number;
}
