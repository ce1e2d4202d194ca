/** The janitor against the real embedded store and the real IPAM (no root needed). */

import test from 'ava';
import { storeWithNetwork } from './fixtures/store-network.ts';
import { buildClusterView } from '../src/cluster-view.ts';
import { Janitor } from '../src/janitor.ts';
import { encodeRecord, encodeText, ENDPOINTS, keys, NETWORKS, newId, type EndpointRecord } from '../src/layout.ts';

test('orphaned names go at once, orphaned addresses on the second run; live ones stay', async (t) => {
  const { store, ipam, logger, pool, net } = await storeWithNetwork(t, '10.5.0.0/24', '10.5.0.1');
  const nid = net.id;
  await store.put(keys.network(nid), encodeRecord(net));

  // A live endpoint: record, name and address.
  const live = newId();
  const a1 = await ipam.allocateAddress(pool.id, { owner: live });
  const ep: EndpointRecord = { id: live, name: 'web', network: nid, node: 'h1', nodeId: 'x', address: a1.address, ip: a1.ip, mac: '02:42:0a:05:00:02', createdAt: '' };
  await store.put(keys.endpoint(nid, live), encodeRecord(ep));
  await store.put(keys.epname(nid, 'web'), encodeText(live));
  // What deleting an endpoint record by hand leaves: its name key and its address.
  const gone = newId();
  const a2 = await ipam.allocateAddress(pool.id, { owner: gone });
  await store.put(keys.epname(nid, 'old'), encodeText(gone));

  const view = async () => {
    const [n, e] = await Promise.all([store.list(NETWORKS), store.list(ENDPOINTS)]);
    return buildClusterView({ networks: n.entries, endpoints: e.entries, nodes: [] });
  };
  const janitor = new Janitor({ store, ipam, logger });
  t.deepEqual(await janitor.run(await view()), { names: 1, addresses: 0, tombstones: 0 });
  t.is(await store.get(keys.epname(nid, 'old')), undefined);
  t.truthy(await store.get(keys.epname(nid, 'web')));
  t.deepEqual((await ipam.listAllocations(pool.id)).map((a) => a.owner).sort(), [live, gone].sort());

  t.deepEqual(await janitor.run(await view()), { names: 0, addresses: 1, tombstones: 0 });
  t.deepEqual((await ipam.listAllocations(pool.id)).map((a) => a.address), [a1.address]);
  // The freed address can be had again.
  t.is((await ipam.allocateAddress(pool.id, { owner: newId(), address: a2.ip })).ip, a2.ip);
  t.deepEqual(await janitor.run(await view()), { names: 0, addresses: 0, tombstones: 0 });

  // Tombstones of a node that did not come back go after the retention time.
  await store.put(keys.reaped('h9', gone), encodeRecord({ ...ep, id: gone, node: 'h9', reapedAt: new Date(0).toISOString() }));
  await store.put(keys.reaped('h8', live), encodeRecord({ ...ep, node: 'h8', reapedAt: new Date().toISOString() }));
  t.like(await janitor.run(await view()), { tombstones: 1 });
  t.is(await store.get(keys.reaped('h9', gone)), undefined);
  t.truthy(await store.get(keys.reaped('h8', live)));
});
