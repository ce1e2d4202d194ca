/**
 * Settings that must be the same on every host of a cluster, recorded once in the store by the first
 * agent and checked by every agent at start. Today: the VXLAN UDP port. A host that sent VXLAN to
 * another port than its peers listen on would black-hole every packet between them without an error
 * anywhere, so an agent whose `--vxlan-port` disagrees with the recorded port refuses to start, naming
 * both values.
 */

import { DEFAULT_VXLAN_PORT } from '@kvnet/dataplane';
import type { KVStore } from '@kvnet/store';
import { ClusterSettingMismatchError } from './errors.ts';
import { decodeRecord, encodeRecord, keys, type VxlanPortRecord } from './layout.ts';

/**
 * Writes the key `reaped` once (create-only) where the store's watch of an empty range is answered by
 * every write elsewhere (`capabilities.emptyRangeWatchWakes`, Consul): every agent watches its own
 * `reaped/<node>/`, almost always empty, and without a key at `reaped` each write in the cluster (every
 * connect, disconnect and address allocation) would answer every agent's tombstone watch — measured
 * on Consul as 2–3 ms of CPU per remote event on every host, most of what a host without an endpoint
 * on a network still paid for its churn. Returns whether it wrote it; a store without that trait: false.
 */
export async function anchorTombstoneWatches(store: KVStore, node: string): Promise<boolean> {
  if (!store.capabilities.emptyRangeWatchWakes) return false;
  const anchor = encodeRecord({ note: 'anchors the agents\' watches of reaped/<node>/ (Consul answers a blocking query on an empty prefix at every write elsewhere); keep it', setBy: node, setAt: new Date().toISOString() });
  return (await store.putIf(keys.reapedAnchor(), anchor, { absent: true })).ok;
}

/** Attempts to read or create the record (a lost create-only race is followed by a read). */
const SETTLE_ATTEMPTS = 3;

/** What {@link settleVxlanPort} found or recorded. */
export interface VxlanPortSettlement {
  readonly port: number;
  /** True when this agent recorded it (the cluster's first agent). */
  readonly recorded: boolean;
  readonly record: VxlanPortRecord;
}

/**
 * Pure: the port this agent uses given the cluster's `recorded` port and its own `--vxlan-port`
 * (`wanted`, undefined when not given); throws ClusterSettingMismatchError naming both values.
 */
export function checkVxlanPort(recorded: VxlanPortRecord, wanted: number | undefined): number {
  if (wanted === undefined || wanted === recorded.port) return recorded.port;
  throw new ClusterSettingMismatchError(
    `--vxlan-port ${wanted} does not match the cluster's VXLAN port ${recorded.port} (recorded in the store at ${keys.vxlanPort()} by ${recorded.setBy} at ${recorded.setAt}): ` +
      `every host of a cluster must use the same UDP port, or the traffic between them is lost; start this agent with --vxlan-port ${recorded.port}, or without --vxlan-port`,
  );
}

/**
 * The cluster's VXLAN port: the recorded one (checked against `wanted`), or, when the cluster has
 * none yet, `wanted` (default 4789) recorded create-only by this agent — of two first agents starting
 * at once exactly one records its port and the other is checked against it.
 */
export async function settleVxlanPort(store: KVStore, wanted: number | undefined, node: string): Promise<VxlanPortSettlement> {
  const key = keys.vxlanPort();
  for (let attempt = 1; ; attempt++) {
    const entry = await store.get(key);
    if (entry) {
      const record = decodeRecord<VxlanPortRecord>(entry.value, entry.key);
      if (!Number.isInteger(record?.port) || record.port < 1 || record.port > 65535) {
        throw new ClusterSettingMismatchError(`the cluster's VXLAN port record ${key} is unusable (${JSON.stringify(record)}); fix or delete it with a store client`);
      }
      return { port: checkVxlanPort(record, wanted), recorded: false, record };
    }
    const record: VxlanPortRecord = { port: wanted ?? DEFAULT_VXLAN_PORT, setBy: node, setAt: new Date().toISOString() };
    const put = await store.putIf(key, encodeRecord(record), { absent: true });
    if (put.ok) return { port: record.port, recorded: true, record };
    if (attempt >= SETTLE_ATTEMPTS) throw new ClusterSettingMismatchError(`could not read or record the cluster's VXLAN port at ${key}; try again`);
  }
}
