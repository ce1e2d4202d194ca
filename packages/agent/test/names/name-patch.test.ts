/**
 * Patching the names table (pure): the records that changed between two views, found from the view's
 * shared buckets, and a compiled table patched in place answering exactly as one compiled from scratch.
 */

import test from 'ava';
import type { WatchEvent } from '@kvnet/store';
import { ClusterViewState } from '../../src/cluster-view.ts';
import { encodeRecord, keys, type EndpointRecord, type NetworkRecord } from '../../src/layout.ts';
import { InvalidNameTableError } from '../../src/names/errors.ts';
import { isIP } from 'node:net';
import { canonicalIp, compileTable, NetworkNames, patchTable, type CompiledNetwork } from '../../src/names/name-lookup.ts';
import { buildNameTable, localSandboxes, networkRecords, recordPatch, sentRecords, validateNamePatch } from '../../src/names/name-table.ts';
import type { NameRecord } from '../../src/names/names.ts';

const hex = (n: number, len = 63): string => n.toString(16).padStart(len, '0');
const NID = `a${hex(1)}`;
const OTHER = `b${hex(2)}`;
const eid = (i: number): string => `e${hex(i)}`;
const net = (id: string, name: string): NetworkRecord => ({ id, name, vni: 4097, poolId: 'p', subnet: '10.0.0.0/16', gateway: '10.0.0.1', auxAddresses: {}, internal: false, labels: {}, options: {}, createdAt: '', createdBy: 'h1' });
function ep(network: string, i: number, node: string, extra: Partial<EndpointRecord> & Record<string, unknown> = {}): EndpointRecord {
  const ip = `10.0.${(i >> 8) & 255}.${i & 255}`;
  return { id: eid(i), name: `c${i}`, network, node, nodeId: node, address: `${ip}/16`, ip, mac: '02:42:00:00:00:01', createdAt: `2026-01-01T00:00:${String(i % 60).padStart(2, '0')}Z`, ...extra } as EndpointRecord;
}
const put = (e: EndpointRecord): WatchEvent => ({ type: 'put', key: keys.endpoint(e.network, e.id), value: encodeRecord(e), revision: '1' });
const del = (e: EndpointRecord): WatchEvent => ({ type: 'delete', key: keys.endpoint(e.network, e.id), revision: '1' });

/** A tiny deterministic random generator (tests must not flake). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** What a compiled network answers, as plain data. */
function answers(n: CompiledNetwork): unknown {
  const sorted = <T>(m: ReadonlyMap<string, T>): [string, T][] => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { names: sorted(n.names), aliases: sorted(n.aliases), ptr: sorted(n.ptr) };
}

/**
 * The answers a record list gives, by the rule written out once more as the oracle: records in order
 * (name, then endpoint); a name's or alias's addresses in that order, each once; an address's PTR is
 * the first record's with it whose `<name>.<network>.` fits on the wire; records without a usable
 * address are skipped.
 */
function reference(records: readonly NameRecord[], network: string): unknown {
  const names = new Map<string, { v4: string[]; v6: string[] }>();
  const aliases = new Map<string, { v4: string[]; v6: string[] }>();
  const ptr = new Map<string, string>();
  const add = (m: typeof names, key: string, ip?: string, ip6?: string): void => {
    const a = m.get(key.toLowerCase()) ?? { v4: [], v6: [] };
    m.set(key.toLowerCase(), a);
    if (ip && !a.v4.includes(ip)) a.v4.push(ip);
    if (ip6 && !a.v6.includes(ip6)) a.v6.push(ip6);
  };
  for (const r of records) {
    const ip = isIP(r.ip) === 4 ? r.ip : undefined;
    const ip6 = r.ip6 !== undefined && isIP(r.ip6) === 6 ? canonicalIp(r.ip6) : undefined;
    if (!ip && !ip6) continue;
    add(names, r.name, ip, ip6);
    for (const a of r.aliases) add(aliases, a, ip, ip6);
    const target = `${r.name.toLowerCase()}.${network.toLowerCase()}.`;
    if (target.split('.').some((label) => label.length > 63)) continue;
    for (const x of [ip, ip6]) if (x && !ptr.has(x)) ptr.set(x, target);
  }
  const sorted = <T>(m: ReadonlyMap<string, T>): [string, T][] => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { names: sorted(names), aliases: sorted(aliases), ptr: sorted(ptr) };
}

test('the patch between two views holds exactly the records put and the endpoints removed, and only for the networks asked about', (t) => {
  const state = new ClusterViewState();
  state.apply('networks', [
    { type: 'put', key: keys.network(NID), value: encodeRecord(net(NID, 'scale')), revision: '1' },
    { type: 'put', key: keys.network(OTHER), value: encodeRecord(net(OTHER, 'side')), revision: '1' },
  ]);
  const eps = Array.from({ length: 500 }, (_, i) => ep(NID, i, i < 20 ? 'h1' : `h${2 + (i % 9)}`));
  state.apply('endpoints', eps.map(put));
  state.apply('endpoints', [put(ep(OTHER, 900, 'h3'))]);
  const before = state.snapshot();
  const sent = sentRecords(before, [NID]);
  t.deepEqual(recordPatch(sent, before), { networks: [] }, 'nothing changed, nothing to send');

  state.apply('endpoints', [put(ep(NID, 600, 'h4', { aliases: ['web'] })), del(eps[33]!), put(ep(NID, 40, 'h5', { ip: '10.0.9.9', address: '10.0.9.9/16' })), put(ep(OTHER, 901, 'h3'))]);
  const after = state.snapshot();
  const patch = recordPatch(sent, after);
  t.is(patch.networks.length, 1, 'the other network is not in the table');
  const p = patch.networks[0]!;
  t.is(p.id, NID);
  t.deepEqual(p.put.map((r) => [r.name, r.ip, r.aliases]).sort(), [['c40', '10.0.9.9', []], ['c600', '10.0.2.88', ['web']]]);
  t.deepEqual(p.remove, [eid(33)]);
  t.notThrows(() => validateNamePatch(patch));

  // Applying it to the table built from the first view gives the table built from the second.
  const local = (v: typeof before) => localSandboxes(v, 'h1');
  const compiled = compileTable(buildNameTable(before, local(before), 'h1'));
  patchTable(compiled, patch);
  const fresh = compileTable(buildNameTable(after, local(after), 'h1'));
  t.deepEqual(answers(compiled.networks.get(NID)!), answers(fresh.networks.get(NID)!));
  t.is(compiled.networks.get(NID)!.size, 500);
});

test('a network patched record by record answers as one compiled whole, through random puts, moves and removals', (t) => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    const r = rng(seed);
    const live = new Map<string, NameRecord>();
    const inc = new NetworkNames('n', 'Net', false);
    for (let step = 0; step < 300; step++) {
      // One step's changes, the last per endpoint: a record put, or null for a removal.
      const changes = new Map<string, NameRecord | null>();
      for (let k = 1 + Math.floor(r() * 4); k > 0; k--) {
        const id = `e${Math.floor(r() * 40)}`;
        if (r() < 0.3 && live.has(id)) {
          changes.set(id, null);
          live.delete(id);
          continue;
        }
        // Few names, aliases and addresses, so records share them (the interesting cases).
        const rec: NameRecord = {
          endpoint: id,
          name: ['web', 'Web', 'db', 'cache', 'x'.repeat(64)][Math.floor(r() * 5)]!,
          aliases: r() < 0.4 ? [['api', 'db', 'edge'][Math.floor(r() * 3)]!] : [],
          ip: r() < 0.1 ? 'not-an-ip' : `10.1.0.${1 + Math.floor(r() * 12)}`,
          ...(r() < 0.3 ? { ip6: `fd00::${1 + Math.floor(r() * 5)}` } : {}),
        };
        changes.set(id, rec);
        live.set(id, rec);
      }
      const put = [...changes.values()].filter((c): c is NameRecord => c !== null);
      const remove = [...changes].filter(([, c]) => c === null).map(([id]) => id);
      inc.patch(put, remove);
      const records = [...live.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.endpoint < b.endpoint ? -1 : 1));
      const whole = reference(records, 'Net');
      if (JSON.stringify(answers(inc)) !== JSON.stringify(whole)) {
        t.fail(`seed ${seed} step ${step}: patched and whole differ`);
        t.deepEqual(answers(inc), whole);
        return;
      }
      t.deepEqual(answers(new NetworkNames('n', 'Net', false, records)), whole, 'compiled at once');
    }
  }
  t.pass();
});

test('a patch naming a network the table lacks is refused, and nothing of it is applied', (t) => {
  const state = new ClusterViewState();
  state.apply('networks', [{ type: 'put', key: keys.network(NID), value: encodeRecord(net(NID, 'scale')), revision: '1' }]);
  state.apply('endpoints', [put(ep(NID, 1, 'h1', { netns: '/run/netns/x' })), put(ep(NID, 2, 'h2'))]);
  const v = state.snapshot();
  const compiled = compileTable(buildNameTable(v, localSandboxes(v, 'h1'), 'h1'));
  const before = answers(compiled.networks.get(NID)!);
  const err = t.throws(() =>
    patchTable(compiled, { networks: [{ id: NID, put: [{ endpoint: eid(3), name: 'new', aliases: [], ip: '10.0.0.3' }], remove: [] }, { id: 'nope', put: [], remove: [eid(2)] }] }),
  );
  t.true(err instanceof InvalidNameTableError);
  t.regex(err!.message, /network nope is not in the table/);
  t.deepEqual(answers(compiled.networks.get(NID)!), before);
  t.throws(() => validateNamePatch({ networks: [{ id: NID, put: [{ endpoint: 'e', name: 'n' }], remove: [] }] }), { message: /networks\[0\]\.put\[0\]/ });
  t.is(networkRecords(v, NID).length, 2);
});
