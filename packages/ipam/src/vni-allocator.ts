/**
 * VXLAN ids, 256 … 16777215. One create-only key per VNI in use (`ipam/vni/ids/<vni>`) names the
 * network holding it; `ipam/vni/networks/<network>` lists a network's VNIs (so a retry finds them);
 * `ipam/vni/cursor` is where the next dynamic search starts (serial, wrapping). All three change in
 * one transaction. A dynamic request lists `ipam/vni` (a few keys per network) to find a free id.
 */

import type { KVStore, Revision, TxnOp } from '@kvnet/store';
import type { Logger } from 'pino';
import { casLoop, type Attempt } from './cas-loop.ts';
import { InvalidRequestError, PoolExhaustedError, VniInUseError } from './errors.ts';
import {
  VNI_CURSOR,
  VNI_IDS,
  VNI_ROOT,
  decodeRecord,
  encode,
  keys,
  validVniCursor,
  validVniId,
  validVniNetwork,
  type VniCursorRecord,
  type VniIdRecord,
  type VniNetworkRecord,
} from './layout.ts';
import { requireId } from './pool.ts';
import { VNI_MAX, VNI_MIN, type VniRequest } from './types.ts';

export interface VniContext {
  readonly store: KVStore;
  readonly log: Logger;
  readonly maxAttempts: number;
  onRetry(): void;
}

export function validateVni(field: string, vni: unknown): number {
  if (typeof vni !== 'number' || !Number.isInteger(vni) || vni < VNI_MIN || vni > VNI_MAX) {
    throw new InvalidRequestError(field, vni, `must be an integer in ${VNI_MIN}…${VNI_MAX}`);
  }
  return vni;
}

/** The first id at or after `from` (wrapping inside [VNI_MIN, VNI_MAX]) not in `used`; undefined when all are. */
export function nextFreeVni(from: number, used: ReadonlySet<number>): number | undefined {
  if (used.size >= VNI_MAX - VNI_MIN + 1) return undefined;
  let v = from < VNI_MIN || from > VNI_MAX ? VNI_MIN : from;
  while (used.has(v)) v = v === VNI_MAX ? VNI_MIN : v + 1;
  return v;
}

export class VniAllocator {
  constructor(private readonly ctx: VniContext) {}

  async allocate(req: VniRequest): Promise<number> {
    const network = requireId('network', req?.network);
    const requested = req.requested === undefined ? undefined : validateVni('requested', req.requested);
    const store = this.ctx.store;
    const what = requested === undefined ? 'a VXLAN id' : `VXLAN id ${requested}`;
    return casLoop(`allocate ${what} for network ${network}`, { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() }, async (): Promise<Attempt<number>> => {
      const listing = await store.list(VNI_ROOT);
      let cursor: { next: number; rev: Revision } | undefined;
      const used = new Map<number, string>();
      let mine: { rec: VniNetworkRecord; rev: Revision } | undefined;
      const netKey = keys.vniNetwork(network);
      for (const e of listing.entries) {
        if (e.key === VNI_CURSOR) cursor = { next: decodeRecord<VniCursorRecord>(e, validVniCursor).next, rev: e.revision };
        else if (e.key.startsWith(VNI_IDS + '/')) used.set(Number(e.key.slice(VNI_IDS.length + 1)), decodeRecord<VniIdRecord>(e, validVniId).n);
        else if (e.key === netKey) mine = { rec: decodeRecord<VniNetworkRecord>(e, validVniNetwork), rev: e.revision };
      }
      let vni: number;
      const ops: TxnOp[] = [];
      if (requested !== undefined) {
        const holder = used.get(requested);
        if (holder === network) return { done: requested };
        if (holder !== undefined) throw new VniInUseError(requested, holder);
        vni = requested;
      } else {
        const held = mine?.rec.vnis[0];
        if (held !== undefined) return { done: held };
        const found = nextFreeVni(cursor?.next ?? VNI_MIN, new Set(used.keys()));
        if (found === undefined) throw new PoolExhaustedError(`${VNI_MIN}-${VNI_MAX}`, undefined, 'VXLAN id');
        vni = found;
        const next: VniCursorRecord = { next: vni === VNI_MAX ? VNI_MIN : vni + 1 };
        ops.push({ op: 'put', key: VNI_CURSOR, value: encode(next), if: cursor ? { revision: cursor.rev } : { absent: true } });
      }
      ops.push({ op: 'put', key: keys.vni(vni), value: encode({ n: network } satisfies VniIdRecord), if: { absent: true } });
      ops.push({
        op: 'put',
        key: netKey,
        value: encode({ n: network, vnis: [...(mine?.rec.vnis ?? []), vni] } satisfies VniNetworkRecord),
        if: mine ? { revision: mine.rev } : { absent: true },
      });
      const r = await store.txn(ops);
      if (!r.ok) return 'retry';
      this.ctx.log.info({ nid: network, vni }, 'VXLAN id allocated');
      return { done: vni };
    });
  }

  /** Releases `vni` if `network` holds it; false otherwise. */
  async release(vni: number, network: string): Promise<boolean> {
    requireId('network', network);
    if (typeof vni !== 'number' || !Number.isInteger(vni) || vni < VNI_MIN || vni > VNI_MAX) return false;
    const store = this.ctx.store;
    return casLoop(`release VXLAN id ${vni} of network ${network}`, { maxAttempts: this.ctx.maxAttempts, onRetry: () => this.ctx.onRetry() }, async (): Promise<Attempt<boolean>> => {
      const [idEntry, netEntry] = await Promise.all([store.get(keys.vni(vni)), store.get(keys.vniNetwork(network))]);
      if (!idEntry || decodeRecord<VniIdRecord>(idEntry, validVniId).n !== network) return { done: false };
      const ops: TxnOp[] = [{ op: 'delete', key: idEntry.key, if: { revision: idEntry.revision } }];
      if (netEntry) {
        const rest = decodeRecord<VniNetworkRecord>(netEntry, validVniNetwork).vnis.filter((v) => v !== vni);
        ops.push(
          rest.length === 0
            ? { op: 'delete', key: netEntry.key, if: { revision: netEntry.revision } }
            : { op: 'put', key: netEntry.key, value: encode({ n: network, vnis: rest } satisfies VniNetworkRecord), if: { revision: netEntry.revision } },
        );
      }
      const r = await store.txn(ops);
      if (!r.ok) return 'retry';
      this.ctx.log.info({ nid: network, vni }, 'VXLAN id released');
      return { done: true };
    });
  }

  /** Every VNI in use: vni → network. */
  async list(): Promise<Map<number, string>> {
    const listing = await this.ctx.store.list(VNI_IDS);
    return new Map(listing.entries.map((e) => [Number(e.key.slice(VNI_IDS.length + 1)), decodeRecord<VniIdRecord>(e, validVniId).n]));
  }
}

