import test from 'ava';
import { PassThrottle, type ThrottleTimers } from '../../src/names/pass-throttle.ts';

/** A clock and timers moved by hand. */
function manualTimers(): ThrottleTimers & { advance(ms: number): void; pending(): number } {
  let now = 1_000;
  let timers: Array<{ at: number; fn: () => void; id: number }> = [];
  let nextId = 1;
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = nextId++;
      timers.push({ at: now + ms, fn, id });
      return id;
    },
    clearTimeout: (id) => void (timers = timers.filter((t) => t.id !== id)),
    advance(ms: number) {
      now += ms;
      for (;;) {
        const due = timers.filter((t) => t.at <= now).sort((a, b) => a.at - b.at)[0];
        if (!due) break;
        timers = timers.filter((t) => t !== due);
        due.fn();
      }
    },
    pending: () => timers.length,
  };
}

test('the first request after a quiet interval runs at once; requests within the interval share one pass at its end', (t) => {
  const timers = manualTimers();
  const runs: number[] = [];
  const throttle = new PassThrottle(250, () => runs.push(timers.now()), timers);
  throttle.request();
  t.deepEqual(runs, [1_000], 'a lone request is not delayed');
  timers.advance(10);
  for (let i = 0; i < 50; i++) throttle.request(); // a burst
  t.deepEqual(runs, [1_000], 'nothing more during the interval');
  t.is(timers.pending(), 1, 'one pass scheduled for the whole burst');
  timers.advance(240);
  t.deepEqual(runs, [1_000, 1_250], 'one pass at the end of the interval');
  timers.advance(100);
  throttle.request();
  t.deepEqual(runs, [1_000, 1_250], 'still within the interval after the last pass');
  timers.advance(150);
  t.deepEqual(runs, [1_000, 1_250, 1_500]);
  timers.advance(1_000);
  throttle.request();
  t.deepEqual(runs, [1_000, 1_250, 1_500, 2_500], 'quiet again: at once');
});

test('stop drops the pending pass and later requests', (t) => {
  const timers = manualTimers();
  let runs = 0;
  const throttle = new PassThrottle(250, () => runs++, timers);
  throttle.request();
  throttle.request();
  throttle.stop();
  timers.advance(1_000);
  throttle.request();
  t.is(runs, 1);
  t.is(timers.pending(), 0);
});
