/** reapNode against the real embedded store and the real IPAM (no root needed). */

import test from 'ava';
import { storeWithNetwork } from './fixtures/store-network.ts';
import { decodeRecord, encodeRecord, encodeText, keys, newId, type EndpointRecord } from '../src/layout.ts';
import { reapNode } from '../src/reaper.ts';

test('a dead node\'s endpoints are removed with their names and addresses, leaving tombstones; a restart announcement postpones it', async (t) => {
  const { store, ipam, logger, pool, net } = await storeWithNetwork(t, '10.6.0.0/24', '10.6.0.1');
  const nid = net.id;
  const eps: EndpointRecord[] = [];
  for (const name of ['a', 'b']) {
    const id = newId();
    const a = await ipam.allocateAddress(pool.id, { owner: id });
    const ep: EndpointRecord = { id, name, network: nid, node: 'dead', nodeId: 'x', address: a.address, ip: a.ip, mac: '02:42:00:00:00:00', createdAt: '' };
    await store.put(keys.endpoint(nid, id), encodeRecord(ep));
    await store.put(keys.epname(nid, name), encodeText(id));
    eps.push(ep);
  }
  const ctx = { store, ipam, logger, self: 'h1' };
  const networks = new Map([[nid, net]]);

  await store.put(keys.restarting('dead'), encodeRecord({ node: 'dead', nodeId: 'x', until: new Date(10_000).toISOString() }));
  t.deepEqual(await reapNode(ctx, 'dead', eps, networks, 5_000), { postponedUntil: 10_000 });
  t.truthy(await store.get(keys.endpoint(nid, eps[0]!.id)), 'nothing removed while postponed');

  t.deepEqual(await reapNode(ctx, 'dead', eps, networks, 20_000), { reaped: 2 });
  for (const ep of eps) {
    t.is(await store.get(keys.endpoint(nid, ep.id)), undefined);
    t.is(await store.get(keys.epname(nid, ep.name)), undefined);
    const tomb = await store.get(keys.reaped('dead', ep.id));
    t.like(decodeRecord<EndpointRecord & { reapedBy: string }>(tomb!.value, 'x'), { id: ep.id, ip: ep.ip, reapedBy: 'h1' });
  }
  t.deepEqual(await ipam.listAllocations(pool.id), []);
  t.is(await store.get(keys.restarting('dead')), undefined, 'the expired marker is removed');
  t.deepEqual(await reapNode(ctx, 'dead', eps, networks, 20_000), { reaped: 0 }, 'a second run finds nothing');

  // A node that is live again is left alone.
  await store.put(keys.node('back'), encodeRecord({ name: 'back' }));
  t.deepEqual(await reapNode(ctx, 'back', [], networks), { reaped: 0 });
});
