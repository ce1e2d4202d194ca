/**
 * The reconcile loop's drift repair (pure logic, a stand-in data plane): the periodic timer's run is
 * the repair (every kernel table read back), so a remote event that follows takes the peers path
 * instead of paying for the repair; with many peers their tables are read back less often than the
 * rest (peersRepairPeriodMs).
 */

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { ApplyOptions, DesiredState, PeerDelta } from '@kvnet/dataplane';
import type { WatchEvent } from '@kvnet/store';
import { ClusterViewState } from '../src/cluster-view.ts';
import { encodeRecord, keys, type EndpointRecord, type NetworkRecord, type NodeRecord } from '../src/layout.ts';
import { LocalState } from '../src/local-state.ts';
import { AgentMetrics } from '../src/metrics.ts';
import { peersRepairPeriodMs, Reconciler, type DataplanePort } from '../src/reconciler.ts';

const NID = `a${'0'.repeat(63)}`;
const eid = (n: number): string => `e${n.toString(16).padStart(63, '0')}`;
const put = (key: string, v: unknown): WatchEvent => ({ type: 'put', key, value: encodeRecord(v), revision: '1' });
const net: NetworkRecord = { id: NID, name: 'n', vni: 4097, poolId: 'p', subnet: '10.0.0.0/16', gateway: '10.0.0.1', auxAddresses: {}, internal: true, labels: {}, options: {}, createdAt: '', createdBy: 'h1' };
const node = (name: string, ip: string): NodeRecord => ({ name, advertise: ip, advertiseAddr: ip, version: '0', startedAt: '', nodeId: `id-${name}` });
const ep = (n: number, owner: string): EndpointRecord => ({ id: eid(n), name: `e${n}`, network: NID, node: owner, nodeId: `id-${owner}`, address: `10.0.0.${n}/16`, ip: `10.0.0.${n}`, mac: `02:42:0a:00:00:${n.toString(16).padStart(2, '0')}`, netns: `/run/netns/c${n}`, ifname: 'eth0', createdAt: `2026-01-01T00:00:${String(n).padStart(2, '0')}Z` });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A reconciler of node h1 over `state`, with a stand-in data plane and a short repair period. */
function reconcilerOn(dataplane: DataplanePort, state: ClusterViewState, dir: string, periodicApplyMs: number): Reconciler {
  return new Reconciler({
    node: 'h1',
    gatewayBridge: 'none',
    dataplane,
    state: LocalState.load(dir),
    view: () => state.snapshot(),
    ready: () => true,
    metrics: new AgentMetrics(),
    logger: pino({ level: 'silent' }),
    afterReconcile: () => undefined,
    periodicApplyMs,
  });
}

/** A stand-in data plane that records its calls: `apply(repair)` (every table read back), `apply(trustPeers)`, `applyPeers(n)`. */
function recordingDataplane(): { calls: string[]; dataplane: DataplanePort } {
  const calls: string[] = [];
  const dataplane: DataplanePort = {
    apply: async (_d: DesiredState, o: ApplyOptions = {}) => {
      calls.push(o.trustPeers ? 'apply(trustPeers)' : 'apply(repair)');
      await sleep(50); // a repair reads the kernel back: it takes a while (at 100 hosts, seconds)
      return { changes: 1, rounds: 1, errors: [], warnings: [], durationMs: 0 };
    },
    applyPeers: async (d: readonly PeerDelta[]) => {
      calls.push(`applyPeers(${d.length})`);
      return { incremental: true, changes: 2, rounds: 1, errors: [], warnings: [], durationMs: 0 };
    },
    ensureGatewayBridge: async () => {
      throw new Error('not used: internal network');
    },
  };
  return { calls, dataplane };
}

test('the periodic run is the repair; a remote event after it takes the peers path', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-reconciler-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { calls, dataplane } = recordingDataplane();
  const state = new ClusterViewState();
  state.apply('networks', [put(keys.network(NID), net)]);
  state.apply('nodes', [put(keys.node('h1'), node('h1', '198.18.0.1')), put(keys.node('h2'), node('h2', '198.18.0.2'))]);
  state.apply('endpoints', [put(keys.endpoint(NID, eid(1)), ep(1, 'h1'))]);
  const PERIOD_MS = 1_000;
  const reconciler = reconcilerOn(dataplane, state, dir, PERIOD_MS);
  reconciler.start();
  t.teardown(() => reconciler.stop());
  await reconciler.reconcileNow();
  t.deepEqual(calls, ['apply(repair)'], 'the first run reads everything');

  // the timer's run is the repair, although counted from the last repair the period is not quite over
  await sleep(PERIOD_MS + 300);
  t.deepEqual(calls, ['apply(repair)', 'apply(repair)'], 'one repair by the timer');

  // a remote endpoint right after (the next tick is ~700 ms away): the peers path, not the repair
  reconciler.noteChange(state.apply('endpoints', [put(keys.endpoint(NID, eid(2)), ep(2, 'h2'))]), false);
  await reconciler.reconcileNow();
  t.deepEqual(calls, ['apply(repair)', 'apply(repair)', 'applyPeers(1)']);
});

test('the peers\' tables are read back every period up to 600 peers, then 50 ms per peer, at most every 10 periods', (t) => {
  t.is(peersRepairPeriodMs(0, 30_000), 30_000);
  t.is(peersRepairPeriodMs(600, 30_000), 30_000);
  t.is(peersRepairPeriodMs(2_000, 30_000), 100_000);
  t.is(peersRepairPeriodMs(50_000, 30_000), 300_000);
  t.is(peersRepairPeriodMs(30, 1_000), 1_500);
});

test('with many peers the periodic repair reads their tables only every peersRepairPeriodMs; the rest every period', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-reconciler-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { calls, dataplane } = recordingDataplane();
  const state = new ClusterViewState();
  state.apply('networks', [put(keys.network(NID), net)]);
  state.apply('nodes', [put(keys.node('h1'), node('h1', '198.18.0.1')), put(keys.node('h2'), node('h2', '198.18.0.2'))]);
  // one local endpoint and 30 peers: with a 1 s period their tables are read back every 1.5 s
  state.apply('endpoints', [put(keys.endpoint(NID, eid(1)), ep(1, 'h1')), ...Array.from({ length: 30 }, (_, i) => put(keys.endpoint(NID, eid(i + 2)), ep(i + 2, 'h2')))]);
  const PERIOD_MS = 1_000;
  const reconciler = reconcilerOn(dataplane, state, dir, PERIOD_MS);
  reconciler.start();
  t.teardown(() => reconciler.stop());
  await reconciler.reconcileNow();
  t.deepEqual(calls, ['apply(repair)'], 'the first run reads everything');
  // ticks at ~1 s (0.95 s since the peers were read: not yet), ~2 s (1.95 s: due), ~3 s (1 s: not yet)
  await sleep(3 * PERIOD_MS + 300);
  t.deepEqual(calls, ['apply(repair)', 'apply(trustPeers)', 'apply(repair)', 'apply(trustPeers)']);
});
