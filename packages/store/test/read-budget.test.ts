import test from 'ava';
import { ReadBudget } from '../src/read-budget.ts';

/** A budget on a clock the test moves. */
function budget(rate: number, capacity: number) {
  let now = 0;
  const b = new ReadBudget(rate, capacity, () => now);
  return { b, advance: (ms: number) => (now += ms) };
}

test('a full budget lets reads through until its capacity is spent, then asks for the time the debt takes to repay', (t) => {
  const { b } = budget(100, 300);
  t.is(b.spend(100), 0);
  t.is(b.spend(200), 0);
  t.is(b.available(), 0);
  t.is(b.spend(50), 500, '50 keys of debt at 100 keys/s: wait 500 ms');
  t.is(b.spend(50), 1_000, 'debts add up across readers');
});

test('the budget refills at its rate, never past its capacity', (t) => {
  const { b, advance } = budget(100, 300);
  b.spend(300);
  advance(1_000);
  t.is(b.available(), 100);
  advance(60_000);
  t.is(b.available(), 300, 'a quiet minute leaves only the capacity in hand');
  t.is(b.spend(300), 0);
  advance(500);
  t.is(b.spend(100), 500, '50 refilled, 50 owed');
});

test('a budget without a positive rate or capacity is refused', (t) => {
  t.throws(() => new ReadBudget(0, 10), { instanceOf: RangeError, message: /positive rate and capacity, got 0 and 10/ });
  t.throws(() => new ReadBudget(10, Number.NaN), { instanceOf: RangeError });
});
