/**
 * Every Consul store write is a `/v1/txn` request: a plain `PUT /v1/kv` answers only `true`, while a
 * transaction returns the new `ModifyIndex` (the revision the contract hands back) and lets one
 * write combine a condition, the removal of an old session binding and the new value. This module
 * turns store operations into Consul's KV transaction verbs and reads the answer; it does no I/O.
 *
 * | store op | Consul verbs |
 * |---|---|
 * | put | `delete`, `set` (or `lock` with the lease's session) |
 * | put if absent | `check-not-exists`, `set`/`lock` |
 * | put if revision | `check-index`, `delete`, `set`/`lock` |
 * | delete [if revision] | [`check-index`], `delete` |
 * | check absent / revision | `check-not-exists` / `check-index` |
 *
 * All conditions go first, so each is checked against the state before the transaction (as in
 * etcd), not against what earlier operations of the same transaction wrote.
 * The `delete` before a write matters: `set` and `cas` keep an existing session binding, and `lock`
 * refuses a key another session holds, so a re-put must drop the old binding first. Inside one
 * transaction a blocking query never sees the key missing, so watchers get a put, not a delete.
 */

import { StoreProtocolError } from './errors.ts';
import type { Revision, TxnOp } from './store.ts';

/** Consul's limit on operations in one transaction (`maxTxnOps` in Consul 1.22's txn endpoint). */
export const CONSUL_TXN_MAX_OPS = 128;
/** The most Consul verbs one store operation needs (a conditional put: check, delete, write). */
export const CONSUL_VERBS_PER_OP = 3;

/** One KV operation of Consul's `/v1/txn` body, with Consul's field names. */
export interface ConsulKvOp {
  readonly KV: {
    readonly Verb: 'set' | 'lock' | 'delete' | 'check-index' | 'check-not-exists' | 'get';
    readonly Key: string;
    readonly Value?: string;
    readonly Index?: number;
    readonly Session?: string;
  };
}

/** What a Consul verb is for, so a failure can be traced to the store operation and its cause. */
export type VerbRole = 'condition' | 'unbind' | 'write' | 'delete';

export interface CompiledTxn {
  readonly ops: ConsulKvOp[];
  /** For each Consul op: the store op it came from and its role. */
  readonly origin: ReadonlyArray<{ readonly op: number; readonly role: VerbRole }>;
}

/** Consul's answer to `/v1/txn`: results on success (HTTP 200), errors on a rollback (HTTP 409). */
export interface ConsulTxnBody {
  readonly Results?: ReadonlyArray<{ readonly KV?: { readonly Key: string; readonly ModifyIndex: number } }> | null;
  readonly Errors?: ReadonlyArray<{ readonly OpIndex: number; readonly What: string }> | null;
}

/** Parses a revision this backend made (a decimal `ModifyIndex`). */
export function parseIndex(url: string, revision: Revision): number {
  if (!/^\d{1,15}$/.test(revision)) throw new StoreProtocolError(url, `revision "${revision}" was not made by the Consul store`);
  return Number(revision);
}

/** Compiles store operations (keys already validated and prefixed by `serverKey`). */
export function compileTxn(url: string, ops: readonly TxnOp[], serverKey: (key: string) => string): CompiledTxn {
  const out: ConsulKvOp[] = [];
  const origin: Array<{ op: number; role: VerbRole }> = [];
  const add = (op: number, role: VerbRole, kv: ConsulKvOp['KV']): void => {
    out.push({ KV: kv });
    origin.push({ op, role });
  };
  // conditions first: every condition holds for the state before the transaction, as in etcd
  ops.forEach((op, i) => {
    const Key = serverKey(op.key);
    if (op.if?.absent) add(i, 'condition', { Verb: 'check-not-exists', Key });
    else if (op.if) add(i, 'condition', { Verb: 'check-index', Key, Index: parseIndex(url, op.if.revision) });
  });
  ops.forEach((op, i) => {
    const Key = serverKey(op.key);
    if (op.op === 'put') {
      if (!op.if?.absent) add(i, 'unbind', { Verb: 'delete', Key });
      const Value = Buffer.from(op.value.buffer, op.value.byteOffset, op.value.byteLength).toString('base64');
      if (op.lease) add(i, 'write', { Verb: 'lock', Key, Value, Session: op.lease.id });
      else add(i, 'write', { Verb: 'set', Key, Value });
    } else if (op.op === 'delete') {
      add(i, 'delete', { Verb: 'delete', Key });
    }
  });
  return { ops: out, origin };
}

/**
 * The revision every put of a successful transaction got. All writes of one transaction share its
 * Raft index, which is above the index of anything a `check-index` echoes back.
 */
export function txnRevision(url: string, body: ConsulTxnBody | undefined): Revision | undefined {
  let max = -1;
  for (const r of body?.Results ?? []) if (r.KV && r.KV.ModifyIndex > max) max = r.KV.ModifyIndex;
  if (max < 0) return undefined;
  if (!Number.isSafeInteger(max)) throw new StoreProtocolError(url, `transaction index ${max} is not an integer`);
  return String(max);
}

/** The first error of a rolled-back transaction, traced to its store operation. */
export function txnFailure(
  url: string,
  compiled: CompiledTxn,
  body: unknown,
): { readonly op: number; readonly role: VerbRole; readonly what: string } {
  const first = (body as ConsulTxnBody | undefined)?.Errors?.[0];
  const origin = first ? compiled.origin[first.OpIndex] : undefined;
  if (!first || !origin) throw new StoreProtocolError(url, `transaction refused without a usable error: ${JSON.stringify(body)}`);
  return { op: origin.op, role: origin.role, what: first.What };
}

/** Why a `check-index` failed: Consul says "doesn't exist" for a missing key, else the index differed. */
export function isMissingKeyError(what: string): boolean {
  return /doesn't exist|does not exist/i.test(what);
}
