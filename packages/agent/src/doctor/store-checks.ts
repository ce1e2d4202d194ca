/**
 * Doctor's store checks: the store's state as the agent knows it (reachable / unavailable since when /
 * resyncing), the latency of one read and of one transaction (a compare of this node's record that
 * changes nothing: it goes the way writes go, so a store that serves reads but not writes — the
 * embedded store's file locked by another process — is caught), this node's registration (its node
 * record and VTEP claim), and
 * — when the store does not answer — a TCP connect to each server, so "no answer within 5000 ms"
 * becomes "198.19.0.1:2181: connection refused". {@link describeServers} is also what the agent adds
 * to a start-up failure.
 */

import { accessSync, constants } from 'node:fs';
import { createConnection } from 'node:net';
import { dirname } from 'node:path';
import { hasCode, parseStoreUrl, storeErrorDetail } from '@kvnet/store';
import type { StoreHealthReport } from '../cluster-mirror.ts';
import type { CoreContext } from '../context.ts';
import { decodeRecord, keys, type NodeRecord, type VtepClaim } from '../layout.ts';
import type { DoctorFinding } from './report.ts';

/** How long one TCP connect to a store server may take. */
export const SERVER_CONNECT_TIMEOUT_MS = 1_000;
/** A read slower than this is reported as a warning. */
export const SLOW_READ_MS = 500;

/** What a TCP connect to one server did. */
export interface ServerProbe {
  readonly server: string;
  readonly result: 'accepts connections' | 'connection refused' | 'no answer' | 'unreachable' | 'name not resolved' | string;
}

/** TCP connect to `host:port`, bounded by {@link SERVER_CONNECT_TIMEOUT_MS}. */
export function connectProbe(host: string, port: number, timeoutMs = SERVER_CONNECT_TIMEOUT_MS): Promise<ServerProbe['result']> {
  return new Promise((resolve) => {
    const sock = createConnection({ host, port });
    const done = (r: string): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done(`no answer within ${timeoutMs} ms`), timeoutMs);
    sock.once('connect', () => done('accepts connections'));
    sock.once('error', (err: NodeJS.ErrnoException) =>
      done(
        err.code === 'ECONNREFUSED'
          ? 'connection refused'
          : err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH'
            ? 'unreachable'
            : err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN'
              ? 'name not resolved'
              : (err.code ?? err.message),
      ),
    );
  });
}

/** Each server of a store URL and what a TCP connect to it does; for `local://`, whether the file's directory is writable. */
export async function probeServers(url: string): Promise<ServerProbe[]> {
  let address;
  try {
    address = parseStoreUrl(url);
  } catch {
    return [];
  }
  if (address.backend === 'local') {
    const path = address.path ?? '';
    try {
      accessSync(path, constants.R_OK | constants.W_OK);
      return [{ server: path, result: 'readable and writable' }];
    } catch {
      try {
        accessSync(dirname(path), constants.W_OK);
        return [{ server: path, result: 'not there yet (its directory is writable)' }];
      } catch (err) {
        return [{ server: path, result: (err as NodeJS.ErrnoException).code ?? 'not accessible' }];
      }
    }
  }
  return Promise.all(address.hosts.map(async (h) => ({ server: `${h.host}:${h.port}`, result: await connectProbe(h.host, h.port) })));
}

/** `198.19.0.1:2181: connection refused; 198.19.0.2:2181: accepts connections` */
export function describeServers(probes: readonly ServerProbe[]): string {
  return probes.map((p) => `${p.server}: ${p.result}`).join('; ');
}

async function unreachable(url: string, storeUrl: string, health: StoreHealthReport): Promise<DoctorFinding> {
  const servers = describeServers(await probeServers(storeUrl));
  const secs = Math.round((Date.now() - Date.parse(health.since)) / 1000);
  return {
    area: 'store',
    status: 'fail',
    summary: `cluster store ${url} is unreachable since ${health.since} (${secs} s)${health.lastError ? `: ${health.lastError}` : ''}${servers ? ` [${servers}]` : ''}`,
    fix: 'bring the store back or fix --cluster-store; meanwhile traffic between existing endpoints flows, reads are served from the last view and changes fail at once',
  };
}

/** Store state, read and transaction latency, registration. `health` is read again after a failed call (which it has noted). */
export async function storeChecks(ctx: Pick<CoreContext, 'store' | 'node' | 'config'>, health: () => StoreHealthReport): Promise<DoctorFinding[]> {
  const { store, node } = ctx;
  const url = store.url;
  const before = health();
  if (before.state === 'unavailable') return [await unreachable(url, ctx.config.storeUrl, before)];
  const out: DoctorFinding[] = [];
  if (before.state === 'resyncing') {
    out.push({ area: 'store', status: 'warn', summary: `cluster store ${url} answers again since ${before.since}; the agent is listing it again`, fix: 'wait a few seconds and run doctor again' });
  }
  let rec;
  const t0 = performance.now();
  const readAt = new Date().toISOString();
  try {
    rec = await store.get(keys.node(node.name));
  } catch (err) {
    const now = health();
    if (now.state === 'unavailable') return [await unreachable(url, ctx.config.storeUrl, now)];
    // The agent only suspects the store after one failed call (its probe decides); doctor's own read
    // not reaching it is reason enough to say so, with what a connection to each server does.
    if (hasCode(err, 'KVNET_STORE_UNAVAILABLE')) {
      const lastError = storeErrorDetail(err);
      return [await unreachable(url, ctx.config.storeUrl, { state: 'unavailable', since: readAt, lastError })];
    }
    return [...out, { area: 'store', status: 'fail', summary: `cluster store ${url} did not answer a read: ${(err as Error).message}`, fix: 'check the store servers and the network path to them' }];
  }
  const ms = Math.round((performance.now() - t0) * 10) / 10;
  out.push(
    ms > SLOW_READ_MS
      ? { area: 'store', status: 'warn', summary: `cluster store ${url} answers, but slowly: one read took ${ms} ms`, fix: 'a loaded or distant store slows every change; check its servers' }
      : { area: 'store', status: 'ok', summary: `cluster store ${url} answers (one read ${ms} ms)` },
  );
  let mine: NodeRecord | undefined;
  try {
    mine = rec ? decodeRecord<NodeRecord>(rec.value, rec.key) : undefined;
  } catch {
    mine = undefined;
  }
  if (!mine) {
    out.push({
      area: 'registration',
      status: 'fail',
      summary: `this node's record ${keys.node(node.name)} is missing from the store: other hosts will treat ${node.name} as dead and reap its endpoints`,
      fix: 'the agent registers again when it notices its lease is gone; if this stays, restart the agent',
    });
  } else if (mine.nodeId !== node.id) {
    out.push({ area: 'registration', status: 'fail', summary: `node name ${node.name} is held by another agent (node id ${mine.nodeId.slice(0, 12)}, advertise ${mine.advertise})`, fix: 'give each host its own --node-name' });
  } else {
    const claim = await store.get(keys.vtep(node.vtep)).catch(() => undefined);
    let holder: VtepClaim | undefined;
    try {
      holder = claim ? decodeRecord<VtepClaim>(claim.value, claim.key) : undefined;
    } catch {
      holder = undefined;
    }
    if (holder && holder.nodeId !== node.id) out.push({ area: 'registration', status: 'fail', summary: `VTEP ${node.vtep} is claimed by node ${holder.node}`, fix: 'each host needs its own --cluster-advertise address' });
    else out.push({ area: 'registration', status: 'ok', summary: `registered as ${node.name} (VTEP ${node.vtep})` });
  }
  if (rec) {
    const t1 = performance.now();
    try {
      await store.txn([{ op: 'check', key: rec.key, if: { revision: rec.revision } }]);
      const txnMs = Math.round((performance.now() - t1) * 10) / 10;
      out.push({ area: 'store', status: txnMs > SLOW_READ_MS ? 'warn' : 'ok', summary: `cluster store ${url} takes transactions (one compare ${txnMs} ms)`, ...(txnMs > SLOW_READ_MS ? { fix: 'a slow store slows every change; check its servers' } : {}) });
    } catch (err) {
      out.push({
        area: 'store',
        status: 'fail',
        summary: `cluster store ${url} answers reads but not transactions: ${(err as Error).message}`,
        fix: 'changes (network create, connect) fail meanwhile; for the embedded store, find the process holding its file locked',
      });
    }
  }
  return out;
}
