/** Node registration against the real embedded store (no root needed). */

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { openStore, type KVStore } from '@kvnet/store';
import { decodeRecord, keys, type NodeRecord } from '../src/layout.ts';
import { Membership } from '../src/membership.ts';

const logger = pino({ level: 'silent' });
const record = (name: string, advertise: string, nodeId: string): NodeRecord => ({
  name, advertise, advertiseAddr: advertise, version: '0', startedAt: new Date().toISOString(), nodeId,
});

async function withStore(t: import('ava').ExecutionContext, fn: (store: KVStore) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-membership-'));
  const store = await openStore(`local://${dir}/store.db`);
  try {
    await fn(store);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
  t.pass();
}

test('registers the node and its VTEP claim on one lease', (t) =>
  withStore(t, async (store) => {
    const m = new Membership({ store, logger, record: record('h1', '198.18.0.1', 'a'.repeat(32)), ttlS: 5 });
    await m.start();
    const node = await store.get(keys.node('h1'));
    const vtep = await store.get(keys.vtep('198.18.0.1'));
    t.is(decodeRecord<NodeRecord>(node!.value, 'n').advertise, '198.18.0.1');
    t.deepEqual(decodeRecord(vtep!.value, 'v'), { node: 'h1', nodeId: 'a'.repeat(32) });
    t.is(node!.leaseId, m.currentLease!.id);
    t.is(vtep!.leaseId, m.currentLease!.id);
    await m.stop();
    // Released, not revoked: the records stay until the TTL runs out.
    t.truthy(await store.get(keys.node('h1')));
  }));

test('another node claiming a live advertise address or node name is refused, naming both', (t) =>
  withStore(t, async (store) => {
    const first = new Membership({ store, logger, record: record('h1', '198.18.0.1', 'a'.repeat(32)), ttlS: 5 });
    await first.start();
    const sameVtep = new Membership({ store, logger, record: record('h3', '198.18.0.1', 'b'.repeat(32)), ttlS: 5 });
    await t.throwsAsync(sameVtep.start(), { code: 'KVNET_NODE_CONFLICT', message: 'advertise address 198.18.0.1 is already claimed by live node h1; this node h3 cannot use it too' });
    const sameName = new Membership({ store, logger, record: record('h1', '198.18.0.9', 'c'.repeat(32)), ttlS: 5 });
    await t.throwsAsync(sameName.start(), { message: /node name h1 is already registered by another live agent \(advertise 198\.18\.0\.1/ });
    // Nothing of the refused agents was written.
    t.is(await store.get(keys.vtep('198.18.0.9')), undefined);
    await first.stop();
  }));

test('a restarted agent (same node id) takes over its previous incarnation\'s records', (t) =>
  withStore(t, async (store) => {
    const id = 'd'.repeat(32);
    const before = new Membership({ store, logger, record: record('h1', '198.18.0.1', id), ttlS: 5 });
    await before.start();
    await before.stop();
    const after = new Membership({ store, logger, record: record('h1', '198.18.0.1', id), ttlS: 5 });
    await after.start();
    t.is((await store.get(keys.node('h1')))!.leaseId, after.currentLease!.id);
    t.is((await store.get(keys.vtep('198.18.0.1')))!.leaseId, after.currentLease!.id);
    await after.stop();
  }));
