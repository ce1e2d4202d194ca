/**
 * How the agent's mirror watches the endpoints (endpoint-mirrors.ts), on a real Consul server and the
 * real embedded store: on Consul per network, a network's record entering the view only with its
 * endpoints, a large network split in 16 watches without a gap or a flicker, a removed network's
 * watches stopped and its endpoints gone from the view, and the store's health back only when every
 * one of those watches has listed again after an outage; on a store whose watch delivers changes, one
 * watch of `endpoints/`; and on Consul only the networks this node is on followed, once it has found
 * its own endpoints. Needs the Consul binary; the Consul tests are skipped without it.
 */

import test from 'ava';
import { join } from 'node:path';
import { openStore, type KVStore } from '@kvnet/store';
import { pino } from 'pino';
import { ClusterMirror } from '../src/cluster-mirror.ts';
import type { ClusterView } from '../src/cluster-view.ts';
import { encodeRecord, keys, newId } from '../src/layout.ts';
import { consulBinary, startServer, type KvServer } from '../../../test/support/kv-servers.ts';
import { makeTempDir, removeTempDir, runId } from '../../../test/support/process.ts';

const id = runId();
const haveConsul = consulBinary() !== undefined;
const consulTest = haveConsul ? test.serial : test.skip;
let consul: KvServer | undefined;
let dir = '';

test.before(async () => {
  dir = makeTempDir(`epmirrors-${id}`);
  if (haveConsul) consul = await startServer('consul');
});

test.after.always(async () => {
  await consul?.dispose();
  removeTempDir(dir);
});

function network(nid: string, vni: number) {
  return encodeRecord({ id: nid, name: `n${vni}`, vni, poolId: 'p', subnet: '10.99.0.0/16', gateway: '10.99.0.1', auxAddresses: {}, internal: false, labels: {}, options: {}, createdAt: new Date(0).toISOString(), createdBy: 'h1' });
}

/** An endpoint id that starts with `digit` (so a test knows which of the 16 watches covers it). */
function eidStarting(digit: string): string {
  return digit + newId().slice(1);
}

function endpoint(nid: string, eid: string, n: number) {
  return encodeRecord({ id: eid, name: `c${n}`, network: nid, node: `h${n % 3}`, nodeId: 'x', address: `10.99.${n >> 8}.${n & 255}/16`, ip: `10.99.${n >> 8}.${n & 255}`, mac: '02:42:0a:63:00:01' });
}

interface Recorder {
  readonly mirror: ClusterMirror;
  /** Problems seen by the invariant checks at each change. */
  readonly problems: string[];
  /** Endpoint ids that left the view, by network. */
  readonly removed: Map<string, string[]>;
}

/**
 * A mirror whose every change is checked: a network in the view has at least `minEndpoints(nid)`
 * endpoints in it (its endpoints are listed before its record appears).
 */
function recordingMirror(store: KVStore, minEndpoints: (nid: string) => number, splitAt?: number): Recorder {
  const problems: string[] = [];
  const removed = new Map<string, string[]>();
  let before: ClusterView | undefined;
  const mirror: ClusterMirror = new ClusterMirror({
    store,
    logger: pino({ level: 'silent' }),
    node: 'h1',
    // these tests are about the watches themselves: every network is followed (the last test: only this node's)
    followMembersOnly: false,
    ...(splitAt === undefined ? {} : { endpointsSplitAt: splitAt }),
    onChange: (change) => {
      const view = mirror.view();
      for (const nid of view.networks.keys()) {
        const have = view.endpoints.get(nid)?.size ?? 0;
        if (have < minEndpoints(nid)) problems.push(`network ${nid.slice(0, 6)} in the view with ${have} endpoints, expected at least ${minEndpoints(nid)}`);
      }
      for (const [nid, eids] of change.endpoints) {
        for (const eid of eids) {
          if (before?.endpoints.get(nid)?.has(eid) && !view.endpoints.get(nid)?.has(eid)) {
            const list = removed.get(nid) ?? [];
            list.push(eid);
            removed.set(nid, list);
          }
        }
      }
      before = view;
    },
    onStoreError: () => undefined,
    onStoreBack: () => undefined,
  });
  return { mirror, problems, removed };
}

consulTest('Consul: endpoints are watched per network; a network enters the view with its endpoints; a large one is split in 16, a large part again in 16, without a gap or a flicker; a removed one takes its endpoints along', async (t) => {
  const store = await openStore(consul!.url(`kvnet${id}split`));
  const a = newId();
  const b = newId();
  const c = newId();
  const written = new Map<string, number>([[a, 5], [b, 2], [c, 3]]);
  let n = 0;
  const put = (nid: string, eid: string) => store.put(keys.endpoint(nid, eid), endpoint(nid, eid, ++n));
  const aEids = [...'01234'].map(eidStarting);
  for (const eid of aEids) await put(a, eid);
  for (const digit of '9f') await put(b, eidStarting(digit));
  await store.put(keys.network(a), network(a, 10));
  await store.put(keys.network(b), network(b, 11));
  const rec = recordingMirror(store, (nid) => written.get(nid) ?? 0, 8);
  const { mirror } = rec;
  mirror.start();
  try {
    await mirror.synced(20_000);
    let view = mirror.view();
    t.deepEqual([...view.networks.keys()].sort(), [a, b].sort());
    t.is(view.endpoints.get(a)?.size, 5);
    t.is(view.endpoints.get(b)?.size, 2);
    t.is(mirror.endpointWatches(a), 1, 'a small network: one watch');
    t.is(mirror.endpointWatches(b), 1);
    t.is(mirror.watches, 5, 'networks, nodes, reaped and one per network');

    // past the limit (8): 16 watches, and the view keeps every endpoint throughout
    for (const digit of '56789abc') {
      const eid = eidStarting(digit);
      aEids.push(eid);
      await put(a, eid);
    }
    t.true(await mirror.waitUntil(() => mirror.endpointWatches(a) === 16, 20_000), 'the network is split once it has more than 8 endpoints');
    t.true(await mirror.waitUntil((v) => v.endpoints.get(a)?.size === 13, 10_000));
    t.is(rec.removed.get(a), undefined, 'no endpoint left the view during the split');
    t.is(mirror.endpointWatches(b), 1, 'the other network keeps its one watch');

    // a part that grows past the limit again is split by the next digit: 15 + 16 watches
    for (let i = 0; i < 8; i++) {
      const eid = eidStarting('c');
      aEids.push(eid);
      await put(a, eid);
    }
    t.true(await mirror.waitUntil(() => mirror.endpointWatches(a) === 31, 20_000), 'the part c… (9 endpoints) is watched in 16 parts c0…cf');
    t.true(await mirror.waitUntil((v) => v.endpoints.get(a)?.size === 21, 10_000));
    t.is(mirror.watches, 3 + 31 + 1, 'the replaced watches are gone');
    t.is(rec.removed.get(a), undefined, 'no endpoint left the view during the second split');

    // the split watches deliver changes in every part
    const late = eidStarting('c');
    await put(a, late);
    t.true(await mirror.waitForView(keys.endpoint(a, late), true, 10_000), 'a new endpoint is seen by the watch of its digits');
    await store.delete(keys.endpoint(a, aEids[0]!));
    t.true(await mirror.waitForView(keys.endpoint(a, aEids[0]!), false, 10_000), 'a deleted one goes');
    view = mirror.view();
    t.is(view.endpoints.get(a)?.size, 21);
    t.deepEqual(rec.removed.get(a), [aEids[0]]);

    // a network whose endpoints are in the store before its record: the record comes with them
    for (const digit of '3ab') await put(c, eidStarting(digit));
    await store.put(keys.network(c), network(c, 12));
    t.true(await mirror.waitForView(keys.network(c), true, 10_000));
    t.is(mirror.view().endpoints.get(c)?.size, 3);

    // a removed network: its watches stop and its endpoints leave the view (they are still in the store)
    await store.delete(keys.network(a));
    t.true(await mirror.waitUntil((v) => !v.networks.has(a) && !v.endpoints.has(a), 10_000), 'the endpoints of a removed network leave the view');
    t.is(mirror.endpointWatches(a), 0);
    t.is((await store.list(keys.endpointsOf(a))).entries.length, 21, 'nothing in the store was touched');
    t.deepEqual(rec.problems, []);
  } finally {
    await mirror.stop();
    await store.close();
  }
});

consulTest('Consul: after the server was down, the store is reachable again only when every per-network watch has listed; changes made meanwhile reach the view', async (t) => {
  const store = await openStore(consul!.url(`kvnet${id}outage`), { timeoutMs: 2_000 });
  const a = newId();
  const b = newId();
  let n = 0;
  for (const digit of '0123456789') {
    const eid = eidStarting(digit);
    await store.put(keys.endpoint(a, eid), endpoint(a, eid, ++n));
  }
  await store.put(keys.network(a), network(a, 20));
  await store.put(keys.network(b), network(b, 21));
  const rec = recordingMirror(store, () => 0, 4);
  const { mirror } = rec;
  const states: string[] = [];
  mirror.health.subscribe((_, to) => states.push(to));
  mirror.start();
  try {
    await mirror.synced(20_000);
    t.true(await mirror.waitUntil(() => mirror.endpointWatches(a) === 16, 20_000));
    await consul!.stop();
    t.true(await mirror.waitUntil(() => mirror.health.current === 'unavailable', 30_000), 'the watches notice the server is gone');
    await consul!.start();
    t.true(await mirror.waitUntil(() => mirror.health.current === 'reachable', 60_000), 'reachable again once every watch has listed');
    t.true(states.includes('unavailable'));
    const eid = eidStarting('e');
    await store.put(keys.endpoint(b, eid), endpoint(b, eid, 99));
    t.true(await mirror.waitForView(keys.endpoint(b, eid), true, 10_000));
    t.is(mirror.view().endpoints.get(a)?.size, 10, 'nothing of the split network was lost');
  } finally {
    await mirror.stop();
    await store.close();
  }
});

consulTest('Consul: a split that would pass the store\'s watch limit (kv.maxwatches) is not made; the part stays one watch and its changes still reach the view', async (t) => {
  // 3 other watches + 30 for endpoints: the first split (2 → 17 watches, 18 while both run) fits, a second (17 + 16) does not
  const store = await openStore(consul!.url(`kvnet${id}budget`), { maxWatches: 33 });
  t.is(store.capabilities.maxWatches, 33);
  const a = newId();
  const b = newId();
  let n = 0;
  const put = (nid: string, eid: string) => store.put(keys.endpoint(nid, eid), endpoint(nid, eid, ++n));
  for (const digit of '0123456') await put(a, eidStarting(digit));
  await put(b, eidStarting('1'));
  await store.put(keys.network(a), network(a, 30));
  await store.put(keys.network(b), network(b, 31));
  const rec = recordingMirror(store, () => 0, 4);
  const { mirror } = rec;
  mirror.start();
  try {
    await mirror.synced(20_000);
    t.true(await mirror.waitUntil(() => mirror.endpointWatches(a) === 16, 20_000), 'the first split fits the budget');
    const cEids: string[] = [];
    for (let i = 0; i < 6; i++) {
      const eid = eidStarting('c');
      cEids.push(eid);
      await put(a, eid);
    }
    t.true(await mirror.waitUntil((v) => v.endpoints.get(a)?.size === 13, 10_000), 'the part c… (6 endpoints, over the limit of 4) delivers all of them');
    // a split would show within a watch answer or two; give it time to (wrongly) happen
    await new Promise((r) => setTimeout(r, 1_000));
    t.is(mirror.endpointWatches(a), 16, 'the part was not split: 16 more watches would pass the budget');
    t.is(mirror.watches, 3 + 16 + 1);
    await store.delete(keys.endpoint(a, cEids[0]!));
    t.true(await mirror.waitForView(keys.endpoint(a, cEids[0]!), false, 10_000), 'changes in the unsplit part still reach the view');
    t.is(rec.removed.get(a)?.length, 1);
    t.deepEqual(rec.problems, []);
  } finally {
    await mirror.stop();
    await store.close();
  }
});

test('a store whose watch delivers changes (the embedded one): one watch of endpoints/ for every network, nothing held back', async (t) => {
  const store = await openStore(`local://${join(dir, 'store.db')}`);
  const a = newId();
  for (let i = 0; i < 12; i++) {
    const eid = newId();
    await store.put(keys.endpoint(a, eid), endpoint(a, eid, i));
  }
  await store.put(keys.network(a), network(a, 30));
  const rec = recordingMirror(store, () => 0, 4);
  const { mirror } = rec;
  mirror.start();
  try {
    await mirror.synced(20_000);
    t.is(mirror.view().endpoints.get(a)?.size, 12);
    t.is(mirror.endpointWatches(a), 1);
    t.is(mirror.watches, 4, 'networks, endpoints, nodes, reaped');
    const b = newId();
    await store.put(keys.network(b), network(b, 31));
    t.true(await mirror.waitForView(keys.network(b), true, 10_000));
    t.is(mirror.endpointWatches(b), 1, 'the same one watch');
  } finally {
    await mirror.stop();
    await store.close();
  }
});

/** An endpoint record of `node` (the owner decides which networks a mirror of that node follows). */
function endpointOf(nid: string, eid: string, node: string, n: number) {
  return encodeRecord({ id: eid, name: `e${n}`, network: nid, node, nodeId: 'x', address: `10.98.0.${n}/16`, ip: `10.98.0.${n}`, mac: '02:42:0a:62:00:01' });
}

consulTest('Consul: only the networks this node is on are followed; the others are in the view without their endpoints and their churn reaches nothing; follow() and tombstones bring a network back, losing the last endpoint lets it go', async (t) => {
  const store = await openStore(consul!.url(`kvnet${id}scope`));
  const a = newId();
  const b = newId();
  const eid = (n: number) => `${n.toString(16).padStart(2, '0')}${newId().slice(2)}`;
  const mineOnA = eid(1);
  await store.put(keys.endpoint(a, mineOnA), endpointOf(a, mineOnA, 'h1', 1));
  await store.put(keys.endpoint(a, eid(2)), endpointOf(a, eid(2), 'h2', 2));
  const theirsOnB = [eid(3), eid(4)];
  await store.put(keys.endpoint(b, theirsOnB[0]!), endpointOf(b, theirsOnB[0]!, 'h2', 3));
  await store.put(keys.endpoint(b, theirsOnB[1]!), endpointOf(b, theirsOnB[1]!, 'h3', 4));
  await store.put(keys.network(a), network(a, 40));
  await store.put(keys.network(b), network(b, 41));
  /** Endpoint changes the view received, by network. */
  const touched = new Map<string, number>();
  const mirror: ClusterMirror = new ClusterMirror({
    store,
    logger: pino({ level: 'silent' }),
    node: 'h1',
    unfollowAfterMs: 300,
    onChange: (change) => {
      for (const [nid, eids] of change.endpoints) touched.set(nid, (touched.get(nid) ?? 0) + eids.size);
    },
    onStoreError: () => undefined,
    onStoreBack: () => undefined,
  });
  mirror.start();
  try {
    await mirror.synced(20_000);
    let view = mirror.view();
    t.deepEqual([...view.networks.keys()].sort(), [a, b].sort(), 'both networks are listed');
    t.is(view.endpoints.get(a)?.size, 2, 'a (this node has an endpoint there): followed');
    t.is(view.endpoints.get(b)?.size ?? 0, 0, 'b (no endpoint of this node): its endpoints are not in the view');
    t.is(mirror.endpointWatches(a), 1);
    t.is(mirror.endpointWatches(b), 0, 'and not watched');
    t.deepEqual(mirror.unfollowedNetworks(), [b]);
    t.deepEqual([...mirror.unfollowedOwners()].sort(), ['h2', 'h3'], 'who owned endpoints on b when it was let go');
    t.is(mirror.watches, 3 + 1);

    // b's churn reaches nothing; a's does
    touched.clear();
    const churn = eid(5);
    await store.put(keys.endpoint(b, churn), endpointOf(b, churn, 'h2', 5));
    await store.delete(keys.endpoint(b, churn));
    const onA = eid(6);
    await store.put(keys.endpoint(a, onA), endpointOf(a, onA, 'h2', 6));
    t.true(await mirror.waitForView(keys.endpoint(a, onA), true, 10_000));
    t.false(touched.has(b), 'no change of b reached the view');

    // this node joins b: followed (and listed) before it writes, kept while it has an endpoint there
    const release = await mirror.follow(b);
    t.is(mirror.endpointWatches(b), 1);
    t.is(mirror.view().endpoints.get(b)?.size, 2, 'b\'s endpoints are listed before follow() returns');
    t.deepEqual(mirror.unfollowedNetworks(), []);
    const mineOnB = eid(7);
    await store.put(keys.endpoint(b, mineOnB), endpointOf(b, mineOnB, 'h1', 7));
    t.true(await mirror.waitForView(keys.endpoint(b, mineOnB), true, 10_000));
    release();
    await new Promise((r) => setTimeout(r, 800));
    t.is(mirror.endpointWatches(b), 1, 'b stays followed while this node has an endpoint there');
    const later = eid(8);
    await store.put(keys.endpoint(b, later), endpointOf(b, later, 'h3', 8));
    t.true(await mirror.waitForView(keys.endpoint(b, later), true, 10_000), 'and its churn reaches the view');

    // this node leaves b: let go after the delay, its endpoints out of the view, its record kept
    await store.delete(keys.endpoint(b, mineOnB));
    t.true(await mirror.waitUntil(() => mirror.endpointWatches(b) === 0, 10_000), 'b is let go');
    view = mirror.view();
    t.is(view.endpoints.get(b)?.size ?? 0, 0);
    t.true(view.networks.has(b), 'its record stays');

    // a new network: in the view at once, not followed
    const c = newId();
    await store.put(keys.network(c), network(c, 42));
    t.true(await mirror.waitForView(keys.network(c), true, 10_000));
    t.is(mirror.endpointWatches(c), 0);

    // a tombstone of this node on c (it was reaped there and will restore): c is followed again
    const reaped = eid(9);
    const other = eid(10);
    await store.put(keys.endpoint(c, other), endpointOf(c, other, 'h2', 10));
    await store.put(keys.reaped('h1', reaped), endpointOf(c, reaped, 'h1', 9));
    t.true(await mirror.waitUntil((v) => mirror.endpointWatches(c) === 1 && v.endpoints.get(c)?.has(other) === true, 10_000), 'c is followed for the restore');
    await new Promise((r) => setTimeout(r, 800));
    t.is(mirror.endpointWatches(c), 1, 'and stays followed while the tombstone is there');
    await store.delete(keys.reaped('h1', reaped));
    t.true(await mirror.waitUntil(() => mirror.endpointWatches(c) === 0, 10_000), 'let go once the tombstone is gone (nothing restored)');

    t.is((await store.list(keys.endpointsOf(b))).entries.length, 3, 'nothing in the store was touched');
  } finally {
    await mirror.stop();
    await store.close();
  }
});
