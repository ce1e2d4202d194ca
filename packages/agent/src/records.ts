/**
 * The record rules, in one place beside the key layout. Every write that creates, renames, deletes,
 * reaps or restores a network or an endpoint goes through {@link Records}, so three rules hold
 * everywhere:
 *
 * 1. A name key changes in the same transaction as the record it names: created with `absent` (of two
 *    writers of one name exactly one commits), deleted only while it still names that record.
 * 2. An endpoint is written only while its network record is unchanged (`check` on the network's
 *    revision): `network rm` marks the network `deleting` first, which fails every concurrent connect.
 * 3. An endpoint's address belongs to it (the IPAM owner is the endpoint id) and is released only
 *    after the transaction that deleted the endpoint committed.
 *
 * Lost races are returned as `false`, not thrown: the caller knows whether to retry or which
 * conflict to report. Store failures (unreachable, timeout) are thrown as the store raised them.
 */

import type { Logger } from 'pino';
import type { Ipam } from '@kvnet/ipam';
import { endpointMac, parseIp } from '@kvnet/netaddr';
import type { KVEntry, KVStore, TxnOp } from '@kvnet/store';
import type { NodeIdentity } from './context.ts';
import { decodeRecord, decodeText, encodeRecord, encodeText, endpointAddresses, keys, type EndpointRecord, type NetworkRecord } from './layout.ts';

/** A record's key and the revision it was read at. */
export interface Revisioned {
  readonly key: string;
  readonly revision: string;
}

/** What a reaper writes beside the endpoint it removed (`reaped/<node>/<eid>`). */
export interface Tombstone {
  readonly node: string;
  readonly reapedBy: string;
  readonly reapedAt: string;
}

/**
 * A new endpoint record of this node: the node's name, id and VTEP, the creation time, and the MAC
 * derived from the addresses unless one is given (`endpointMac`: `02:42:` + the four IPv4 bytes,
 * Docker's rule, whenever there is an IPv4 address; for an IPv6-only endpoint `06:` + five bytes of a
 * hash of the IPv6 address).
 */
export function newEndpointRecord<T extends EndpointRecord = EndpointRecord>(
  node: NodeIdentity,
  fields: Pick<EndpointRecord, 'id' | 'name' | 'network' | 'address' | 'ip'> & Partial<Omit<T, 'node' | 'nodeId' | 'vtep' | 'createdAt'>>,
): T {
  const { v4, v6 } = endpointAddresses(fields);
  const ipv4 = v4 ? parseIp(v4.slice(0, v4.indexOf('/'))) : undefined;
  const ipv6 = v6 ? parseIp(v6.slice(0, v6.indexOf('/'))) : undefined;
  return {
    mac: endpointMac({ ...(ipv4 ? { ipv4 } : {}), ...(ipv6 ? { ipv6 } : {}) }),
    ...fields,
    node: node.name,
    nodeId: node.id,
    vtep: node.vtep,
    createdAt: new Date().toISOString(),
  } as T;
}

/**
 * The endpoint records of network `nid` as the store holds them now (one listing): what the agent
 * reads for a network whose endpoints it does not follow. An unreadable record is handed to
 * `onUnreadable` and skipped.
 */
export async function listEndpointRecords(store: KVStore, nid: string, onUnreadable?: (key: string, err: unknown) => void): Promise<EndpointRecord[]> {
  const out: EndpointRecord[] = [];
  for (const entry of (await store.list(keys.endpointsOf(nid))).entries) {
    try {
      out.push(decodeRecord<EndpointRecord>(entry.value, entry.key));
    } catch (err) {
      onUnreadable?.(entry.key, err);
    }
  }
  return out;
}

export class Records {
  constructor(
    private readonly store: KVStore,
    private readonly ipam: Ipam,
    private readonly logger: Logger,
  ) {}

  /** The current value of the name key `key` when it still names `id`, as a conditional delete. */
  private async deleteNameIfOwned(key: string, id: string): Promise<TxnOp[]> {
    const entry = await this.store.get(key);
    return entry && decodeText(entry.value) === id ? [{ op: 'delete', key: entry.key, if: { revision: entry.revision } }] : [];
  }

  // ---- networks ----

  /** Writes a new network and its name; false when the name (or the id) is taken. */
  async createNetwork(record: NetworkRecord): Promise<boolean> {
    const r = await this.store.txn([
      { op: 'put', key: keys.netname(record.name), value: encodeText(record.id), if: { absent: true } },
      { op: 'put', key: keys.network(record.id), value: encodeRecord(record), if: { absent: true } },
    ]);
    return r.ok;
  }

  /** Replaces a network record read at `current`; its name key moves with it when the name changes. */
  async updateNetwork(current: Revisioned, before: NetworkRecord, after: NetworkRecord): Promise<boolean> {
    const ops: TxnOp[] = [{ op: 'put', key: current.key, value: encodeRecord(after), if: { revision: current.revision } }];
    if (after.name !== before.name) {
      ops.unshift({ op: 'put', key: keys.netname(after.name), value: encodeText(after.id), if: { absent: true } });
      ops.push(...(await this.deleteNameIfOwned(keys.netname(before.name), before.id)));
    }
    return (await this.store.txn(ops)).ok;
  }

  /** Deletes a network record read at `current` and its name key. Pool and VNI are the caller's to release. */
  async deleteNetwork(current: Revisioned, record: NetworkRecord): Promise<boolean> {
    const ops: TxnOp[] = [{ op: 'delete', key: current.key, if: { revision: current.revision } }, ...(await this.deleteNameIfOwned(keys.netname(record.name), record.id))];
    return (await this.store.txn(ops)).ok;
  }

  // ---- endpoints ----

  /**
   * Writes a new endpoint and its name while the network is still at `network`'s revision (its
   * address was allocated for it beforehand); false when the name is taken or the network changed.
   */
  async createEndpoint(network: Revisioned, record: EndpointRecord): Promise<boolean> {
    const r = await this.store.txn([
      { op: 'check', key: network.key, if: { revision: network.revision } },
      { op: 'put', key: keys.epname(record.network, record.name), value: encodeText(record.id), if: { absent: true } },
      { op: 'put', key: keys.endpoint(record.network, record.id), value: encodeRecord(record), if: { absent: true } },
    ]);
    return r.ok;
  }

  /** Replaces an endpoint record read at `current`; its name key moves with it when the name changes. */
  async updateEndpoint(current: Revisioned, before: EndpointRecord, after: EndpointRecord): Promise<boolean> {
    const ops: TxnOp[] = [{ op: 'put', key: current.key, value: encodeRecord(after), if: { revision: current.revision } }];
    if (after.name !== before.name) {
      ops.unshift({ op: 'put', key: keys.epname(after.network, after.name), value: encodeText(after.id), if: { absent: true } });
      ops.push(...(await this.deleteNameIfOwned(keys.epname(before.network, before.name), before.id)));
    }
    return (await this.store.txn(ops)).ok;
  }

  /**
   * Deletes an endpoint (unconditionally, or only at `revision`) with its name key — and, for a reaper,
   * writes its tombstone in the same transaction — then releases its address from `poolId` and its
   * IPv6 address from `poolId6` (when given; the network's `poolId6`). False when the endpoint changed
   * meanwhile (nothing deleted, nothing released).
   */
  async deleteEndpoint(ep: EndpointRecord, opts: { revision?: string; poolId?: string; poolId6?: string; tombstone?: Tombstone } = {}): Promise<boolean> {
    const key = keys.endpoint(ep.network, ep.id);
    const ops: TxnOp[] = [
      { op: 'delete', key, ...(opts.revision ? { if: { revision: opts.revision } } : {}) },
      ...(await this.deleteNameIfOwned(keys.epname(ep.network, ep.name), ep.id)),
    ];
    if (opts.tombstone) ops.push({ op: 'put', key: keys.reaped(opts.tombstone.node, ep.id), value: encodeRecord({ ...ep, reapedBy: opts.tombstone.reapedBy, reapedAt: opts.tombstone.reapedAt }) });
    if (!(await this.store.txn(ops)).ok) return false;
    await this.releaseAddresses({ poolId: opts.poolId, poolId6: opts.poolId6 }, ep);
    return true;
  }

  /**
   * Brings back a reaped endpoint under its id, name and address (already allocated again by the
   * caller) while the network is unchanged and name and key are free; removes its tombstone.
   */
  async restoreEndpoint(network: Revisioned, record: EndpointRecord, tombstone: KVEntry): Promise<boolean> {
    const r = await this.store.txn([
      { op: 'check', key: network.key, if: { revision: network.revision } },
      { op: 'put', key: keys.epname(record.network, record.name), value: encodeText(record.id), if: { absent: true } },
      { op: 'put', key: keys.endpoint(record.network, record.id), value: encodeRecord(record), if: { absent: true } },
      { op: 'delete', key: tombstone.key, if: { revision: tombstone.revision } },
    ]);
    return r.ok;
  }

  /** Releases an endpoint's address (best effort: a failure is logged, the janitor frees it later). */
  async releaseAddress(poolId: string, ep: Pick<EndpointRecord, 'id' | 'address'>): Promise<void> {
    await this.ipam.releaseAddress(poolId, ep.address, ep.id).catch((err) => this.logger.warn({ err, eid: ep.id, address: ep.address }, 'could not release an endpoint address; the janitor will'));
  }

  /**
   * Releases every address of an endpoint: `address` from `poolId` and, when the endpoint has an
   * IPv6 address beside it, `address6` from `poolId6` (best effort, like {@link releaseAddress}).
   */
  async releaseAddresses(pools: { readonly poolId?: string | undefined; readonly poolId6?: string | undefined }, ep: Pick<EndpointRecord, 'id' | 'address' | 'address6'>): Promise<void> {
    if (pools.poolId) await this.releaseAddress(pools.poolId, ep);
    if (pools.poolId6 && ep.address6 && ep.address6 !== ep.address) await this.releaseAddress(pools.poolId6, { id: ep.id, address: ep.address6 });
  }
}
