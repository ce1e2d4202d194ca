/**
 * Where IPAM keeps its state in the store (all keys relative to the store's cluster prefix) and the
 * JSON records stored there. The README's "Store layout" section is the prose version of this file.
 *
 * ```
 * ipam/pool-table/version                  {"n":…}          bumped by every pool create/delete (CAS)
 * ipam/pool-table/ula6                     {"b":"fdxx:xxxx:xxxx::/48"}  the cluster's default IPv6 base (create-only)
 * ipam/pool-table/pools/<poolId>           PoolRecord
 * ipam/addrs/<poolId>/cursor               {"s":"<shard>"}  shard of the last dynamic allocation
 * ipam/addrs/<poolId>/shards/<shard>       {"b":base64,"l":n} 256-address bitmap + last offset used
 * ipam/addrs/<poolId>/ips/<ip>             {"o":owner}       one key per allocated address
 * ipam/addrs/<poolId>/owners/<owner>       {"o":owner,"ips":[…]}
 * ipam/vni/cursor                          {"next":n}
 * ipam/vni/ids/<vni>                       {"n":network}
 * ipam/vni/networks/<network>              {"n":network,"vnis":[…]}
 * ```
 */

import { decodeJson, encodeJson, encodeSegment, type KVEntry } from '@kvnet/store';
import { CorruptRecordError } from './errors.ts';

export const ROOT = 'ipam';
export const POOL_TABLE = `${ROOT}/pool-table`;
export const POOL_TABLE_VERSION = `${POOL_TABLE}/version`;
export const POOL_TABLE_POOLS = `${POOL_TABLE}/pools`;
/** The cluster's random ULA /48 that default IPv6 pools come from (written once, with the first such pool). */
export const POOL_TABLE_ULA6 = `${POOL_TABLE}/ula6`;
export const VNI_ROOT = `${ROOT}/vni`;
export const VNI_CURSOR = `${VNI_ROOT}/cursor`;
export const VNI_IDS = `${VNI_ROOT}/ids`;
export const VNI_NETWORKS = `${VNI_ROOT}/networks`;

export const RECORD_VERSION = 1;

export const keys = {
  pool: (poolId: string): string => `${POOL_TABLE_POOLS}/${poolId}`,
  addrs: (poolId: string): string => `${ROOT}/addrs/${poolId}`,
  cursor: (poolId: string): string => `${ROOT}/addrs/${poolId}/cursor`,
  shards: (poolId: string): string => `${ROOT}/addrs/${poolId}/shards`,
  shard: (poolId: string, shard: bigint): string => `${ROOT}/addrs/${poolId}/shards/${shard}`,
  ips: (poolId: string): string => `${ROOT}/addrs/${poolId}/ips`,
  ip: (poolId: string, ip: string): string => `${ROOT}/addrs/${poolId}/ips/${ip}`,
  owners: (poolId: string): string => `${ROOT}/addrs/${poolId}/owners`,
  owner: (poolId: string, owner: string): string => `${ROOT}/addrs/${poolId}/owners/${encodeSegment(owner)}`,
  vni: (vni: number): string => `${VNI_IDS}/${vni}`,
  vniNetwork: (network: string): string => `${VNI_NETWORKS}/${encodeSegment(network)}`,
};

export interface PoolRecord {
  v: number;
  id: string;
  addressSpace: string;
  family: 4 | 6;
  subnet: string;
  /** `ip/len` */
  gateway: string;
  ipRange?: string;
  auxAddresses: Record<string, string>;
  owner: string;
  /** Taken from the default pools (no subnet in the request). */
  auto: boolean;
  /** `releasing`: releasePool has begun; no address can be allocated any more. */
  state: 'active' | 'releasing';
}

export interface VersionRecord {
  n: number;
}
/** The cluster's default IPv6 base. */
export interface UlaRecord {
  /** A /48 of fd00::/8, e.g. `fd3c:9a1e:77b0::/48`. */
  b: string;
}
export interface ShardRecord {
  /** base64 bitmap */
  b: string;
  /** Offset inside the shard of the last dynamic allocation made in it (absent: none). */
  l?: number;
}
export interface CursorRecord {
  /** Shard (decimal) of the last dynamic allocation. */
  s: string;
}
export interface IpRecord {
  o: string;
}
export interface OwnerRecord {
  o: string;
  ips: string[];
}
export interface VniCursorRecord {
  next: number;
}
export interface VniIdRecord {
  n: string;
}
export interface VniNetworkRecord {
  n: string;
  vnis: number[];
}

export const encode = encodeJson;

/** Decodes a record and checks its shape with `valid`; a failure names the key. */
export function decodeRecord<T>(entry: KVEntry, valid: (x: any) => boolean): T {
  let value: unknown;
  try {
    value = decodeJson<unknown>(entry.value, entry.key);
  } catch (err) {
    throw new CorruptRecordError(entry.key, (err as Error).message);
  }
  if (typeof value !== 'object' || value === null || !valid(value)) {
    throw new CorruptRecordError(entry.key, 'unexpected shape');
  }
  return value as T;
}

const isStr = (x: unknown): x is string => typeof x === 'string';

export const validPool = (x: any): boolean =>
  x.v === RECORD_VERSION &&
  isStr(x.id) &&
  isStr(x.addressSpace) &&
  (x.family === 4 || x.family === 6) &&
  isStr(x.subnet) &&
  isStr(x.gateway) &&
  (x.ipRange === undefined || isStr(x.ipRange)) &&
  typeof x.auxAddresses === 'object' &&
  x.auxAddresses !== null &&
  isStr(x.owner) &&
  typeof x.auto === 'boolean' &&
  (x.state === 'active' || x.state === 'releasing');
export const validVersion = (x: any): boolean => Number.isSafeInteger(x.n);
export const validUla = (x: any): boolean => isStr(x.b);
export const validShard = (x: any): boolean => isStr(x.b) && (x.l === undefined || Number.isInteger(x.l));
export const validCursor = (x: any): boolean => isStr(x.s) && /^[0-9]+$/.test(x.s);
export const validIp = (x: any): boolean => isStr(x.o);
export const validOwner = (x: any): boolean => isStr(x.o) && Array.isArray(x.ips) && x.ips.every(isStr);
export const validVniCursor = (x: any): boolean => Number.isInteger(x.next);
export const validVniId = (x: any): boolean => isStr(x.n);
export const validVniNetwork = (x: any): boolean => isStr(x.n) && Array.isArray(x.vnis) && x.vnis.every(Number.isInteger);
