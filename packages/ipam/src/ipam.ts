/**
 * The {@link Ipam} facade: pools, addresses and VXLAN ids on the cluster store. Any number of
 * instances, in any number of processes and hosts, may work on one store at the same time; the
 * store's compare-and-swap keeps every address and VNI unique. Layout and rules: README.md.
 */

import type { KVStore } from '@kvnet/store';
import { pino, type Logger } from 'pino';
import { AddressAllocator } from './address-allocator.ts';
import { InvalidRequestError, PoolNotFoundError } from './errors.ts';
import { keys } from './layout.ts';
import { PoolTable, parseDefaultPools } from './pool-table.ts';
import {
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_POOLS,
  type AddressAllocation,
  type AddressRequest,
  type IpamOptions,
  type IpamStats,
  type PoolInfo,
  type PoolRequest,
  type VniRequest,
} from './types.ts';
import { VniAllocator } from './vni-allocator.ts';

/** Pool ids are single store key segments (see makePoolId); anything else cannot name a pool. */
function isPoolId(poolId: unknown): poolId is string {
  return typeof poolId === 'string' && /^[A-Za-z0-9._:@+=,-]{1,255}$/.test(poolId) && poolId !== '.' && poolId !== '..';
}

export class Ipam {
  private readonly store: KVStore;
  private readonly log: Logger;
  private readonly maxAttempts: number;
  private readonly counters = { casRetries: 0, allocations: 0 };
  private readonly pools: PoolTable;
  private readonly addresses: AddressAllocator;
  private readonly vnis: VniAllocator;

  /**
   * Throws {@link InvalidRequestError} for unusable options (a default pool of the wrong family or not a
   * CIDR, a size outside base…32 or 64…126 for IPv6, maxAttempts < 1). Does not contact the store.
   */
  constructor(opts: IpamOptions) {
    if (!opts?.store) throw new InvalidRequestError('store', opts?.store, 'a KVStore is required');
    this.store = opts.store;
    this.log = (opts.logger ?? pino({ level: 'silent' })).child({ component: 'ipam' });
    const maxAttempts = opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1) throw new InvalidRequestError('maxAttempts', maxAttempts, 'must be an integer ≥ 1');
    this.maxAttempts = maxAttempts;
    const defaultPools = parseDefaultPools(opts.defaultPools ?? DEFAULT_POOLS, 4);
    const defaultPools6 = opts.defaultPools6 ? parseDefaultPools(opts.defaultPools6, 6) : undefined;
    const onRetry = (): void => {
      this.counters.casRetries++;
    };
    const base = { store: this.store, log: this.log, maxAttempts, onRetry };
    this.pools = new PoolTable({ ...base, defaultPools, ...(defaultPools6 ? { defaultPools6 } : {}) });
    this.addresses = new AddressAllocator({
      ...base,
      onAllocated: (n) => {
        this.counters.allocations += n;
      },
    });
    this.vnis = new VniAllocator(base);
  }

  /**
   * Reserves a pool: the requested subnet, or (without one) the first subnet of the default pools (with
   * `v6: true` the default IPv6 pools: the cluster's ULA /48 in /64s) that overlaps no pool of the
   * address space. Idempotent per (addressSpace, owner): a retried request (same owner, same subnet or
   * again none, same family and options) returns the pool already created. Nothing is stored when it
   * throws.
   *
   * @throws InvalidRequestError a field is malformed or inconsistent, or an IPv6 subnet is larger than
   *   /64 without an ip-range of /64 or smaller (names field and value)
   * @throws PoolOverlapError the subnet overlaps a pool of the address space (names its subnet and owner)
   * @throws PoolExhaustedError no default subnet is free
   * @throws CasGaveUpError lost `maxAttempts` races in a row
   */
  async requestPool(req: PoolRequest): Promise<PoolInfo> {
    return this.pools.request(req);
  }

  /** The pool, or undefined when it does not exist (a pool being released has `releasing: true`). */
  async getPool(poolId: string): Promise<PoolInfo | undefined> {
    return this.pools.get(poolId);
  }

  /** Every pool, or those of one address space. */
  async listPools(addressSpace?: string): Promise<PoolInfo[]> {
    return this.pools.list(addressSpace);
  }

  /**
   * Releases the pool and every address in it. Idempotent: a pool that no longer exists is not an
   * error. An interrupted release (process killed) leaves the pool marked `releasing`; calling
   * releasePool again finishes it.
   *
   * @throws PoolOwnerMismatchError the pool belongs to another network
   */
  async releasePool(poolId: string, owner: string): Promise<void> {
    await this.pools.release(poolId, owner, () => this.deleteAddressKeys(poolId));
    this.addresses.forget(poolId);
  }

  private async deleteAddressKeys(poolId: string): Promise<void> {
    const batch = Math.max(1, this.store.capabilities.maxTxnOps);
    for (;;) {
      const listing = await this.store.list(keys.addrs(poolId));
      if (listing.entries.length === 0) return;
      for (let i = 0; i < listing.entries.length; i += batch) {
        await this.store.txn(listing.entries.slice(i, i + batch).map((e) => ({ op: 'delete' as const, key: e.key })));
      }
    }
  }

  /**
   * Allocates an address in the pool for `owner` (an endpoint id).
   * - `address` omitted: the next free address after the last one allocated in this pool (wrapping),
   *   inside the pool's ip-range if it has one; never the network, broadcast, gateway or aux addresses.
   *   If the owner already holds an address in the pool, that one is returned (a retried request).
   * - `address` given (bare or `ip/len`): exactly that address; returned again if this owner holds it.
   *
   * @throws PoolNotFoundError no such pool, or it is being released
   * @throws PoolExhaustedError no free address left (names the pool's subnet)
   * @throws AddressInUseError the requested address is held by another owner or reserved (names the holder)
   * @throws InvalidRequestError the address is malformed or outside the pool
   * @throws CasGaveUpError lost `maxAttempts` races in a row
   */
  async allocateAddress(poolId: string, req: AddressRequest): Promise<AddressAllocation> {
    if (!isPoolId(poolId)) throw new PoolNotFoundError(String(poolId));
    if (req?.address !== undefined && req.address !== '') return this.addresses.allocateSpecific(poolId, req.owner, req.address);
    return this.addresses.allocateDynamic(poolId, req?.owner);
  }

  /** Releases `address` (bare or `ip/len`) if `owner` holds it; false when it was not held by that owner. */
  async releaseAddress(poolId: string, address: string, owner: string): Promise<boolean> {
    if (!isPoolId(poolId)) return false;
    return this.addresses.release(poolId, address, owner);
  }

  /** Releases everything `owner` holds in the pool (dead-node reaping); returns the released IPs (bare). */
  async releaseOwner(poolId: string, owner: string): Promise<string[]> {
    if (!isPoolId(poolId)) return [];
    return this.addresses.releaseOwner(poolId, owner);
  }

  /** Every allocated address of the pool, in address order: `address` is `ip/len`, `ip` bare. */
  async listAllocations(poolId: string): Promise<Array<{ address: string; ip: string; owner: string }>> {
    if (!isPoolId(poolId)) throw new PoolNotFoundError(String(poolId));
    return this.addresses.list(poolId);
  }

  /**
   * Checks a pool's stored state for consistency (bitmaps, address keys and owner records agree;
   * nothing reserved is allocated). For tests, `kvnet` diagnostics and after a crash.
   */
  async checkPool(poolId: string): Promise<{ allocated: number; problems: string[] }> {
    if (!isPoolId(poolId)) throw new PoolNotFoundError(String(poolId));
    return this.addresses.check(poolId);
  }

  /**
   * A VXLAN id for `network`: `requested` exactly (refused with VniInUseError when another network
   * holds it), or the next free one after the last handed out (serial, wrapping). Idempotent per
   * network: a dynamic request by a network that holds a VNI returns it.
   */
  async allocateVni(req: VniRequest): Promise<number> {
    return this.vnis.allocate(req);
  }

  /** Releases `vni` if `network` holds it; false otherwise. */
  async releaseVni(vni: number, network: string): Promise<boolean> {
    return this.vnis.release(vni, network);
  }

  /** Every VXLAN id in use → the network holding it. */
  async listVnis(): Promise<Map<number, string>> {
    return this.vnis.list();
  }

  /** Counters since construction (for the benchmark and metrics). */
  stats(): IpamStats {
    return { ...this.counters };
  }
}

