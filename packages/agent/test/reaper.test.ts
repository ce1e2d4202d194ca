import test from 'ava';
import { chooseReaper, DeadNodeTracker } from '../src/reaper.ts';

test('every agent picks the same reaper whatever the order of the live names', (t) => {
  const live = ['h1', 'h2', 'h3', 'h4', 'h5'];
  for (const dead of ['h6', 'h7', 'node-a', 'node-b']) {
    const a = chooseReaper(live, dead);
    const b = chooseReaper([...live].reverse(), dead);
    t.is(a, b);
    t.true(live.includes(a!));
  }
});

test('reapers spread over live nodes, and another takes over when the chosen one dies', (t) => {
  const live = ['h1', 'h2', 'h3', 'h4'];
  const picked = new Set<string>();
  for (let i = 0; i < 40; i++) picked.add(chooseReaper(live, `dead${i}`)!);
  t.true(picked.size > 1, 'not always the same node');
  const first = chooseReaper(live, 'dead7')!;
  const second = chooseReaper(live.filter((n) => n !== first), 'dead7')!;
  t.not(second, first);
  t.true(live.includes(second));
});

test('no live nodes: nobody; one live node: that one', (t) => {
  t.is(chooseReaper([], 'x'), undefined);
  t.is(chooseReaper(['only'], 'x'), 'only');
});

test('a missing owner is due only after the grace period, counted from when it was first seen missing', (t) => {
  const tr = new DeadNodeTracker(1000);
  tr.update(new Set(['h1', 'h2']), ['h1', 'h2'], 0);
  t.deepEqual(tr.missing(), []);
  tr.update(new Set(['h1']), ['h1', 'h2'], 100);
  t.deepEqual(tr.missing(), ['h2']);
  t.deepEqual(tr.due(500), []);
  tr.update(new Set(['h1']), ['h1', 'h2'], 600); // seen again: the clock does not restart
  t.deepEqual(tr.due(1100), ['h2']);
  t.is(tr.nextDueAt(), 1100);
});

test('a node that comes back, or whose endpoints are gone, is no longer pending', (t) => {
  const tr = new DeadNodeTracker(1000);
  tr.update(new Set(['h1']), ['h1', 'h2', 'h3'], 0);
  tr.update(new Set(['h1', 'h2']), ['h1', 'h2', 'h3'], 10);
  t.deepEqual(tr.missing(), ['h3']);
  tr.update(new Set(['h1', 'h2']), ['h1', 'h2'], 20);
  t.deepEqual(tr.missing(), []);
  t.is(tr.nextDueAt(), undefined);
});

test('after a store outage nothing is due until the quiet period ends', (t) => {
  const tr = new DeadNodeTracker(1000);
  tr.update(new Set(['h1']), ['h2'], 0);
  tr.noteOutageEnded(5000, 3000);
  t.deepEqual(tr.due(6000), []);
  t.is(tr.nextDueAt(), 8000);
  t.deepEqual(tr.due(8000), ['h2']);
});

test('a node that announced a restart is not due before the announced time; the postponement ends when it is back', (t) => {
  const tr = new DeadNodeTracker(1000);
  tr.update(new Set(['h1']), ['h2'], 0);
  tr.postpone('h2', 30_000);
  t.deepEqual(tr.due(5000), []);
  t.is(tr.nextDueAt(), 30_000);
  t.deepEqual(tr.due(30_000), ['h2']);
  tr.update(new Set(['h1', 'h2']), ['h2'], 31_000);
  tr.update(new Set(['h1']), ['h2'], 40_000); // gone again later: a fresh grace, no old postponement
  t.deepEqual(tr.due(41_000), ['h2']);
});
