/**
 * How much one client's watches may read per second, for backends whose watch answers carry the
 * whole watched range (Consul). A token bucket counted in keys: it starts full, refills at `rate`
 * keys per second up to `capacity`, and each answer spends the keys it carried. A watch whose answer
 * left the bucket in debt waits, before its next read, until the debt is paid; debts add up across
 * the client's watches, so during a burst the client's reads spread out (each bringing more changes
 * at once) while a watch that was quiet hears the first change at once.
 */
export class ReadBudget {
  private balance: number;
  private at: number;

  constructor(
    private readonly rate: number,
    private readonly capacity: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(rate > 0) || !(capacity > 0)) throw new RangeError(`a read budget needs a positive rate and capacity, got ${rate} and ${capacity}`);
    this.balance = capacity;
    this.at = now();
  }

  /** Spends `keys` and returns how long (ms) the reader should wait before it reads again: 0 unless in debt. */
  spend(keys: number): number {
    this.refill();
    this.balance -= keys;
    return this.balance >= 0 ? 0 : Math.ceil((-this.balance / this.rate) * 1000);
  }

  /** What is left now (negative: the debt). */
  available(): number {
    this.refill();
    return this.balance;
  }

  private refill(): void {
    const t = this.now();
    this.balance = Math.min(this.capacity, this.balance + ((t - this.at) / 1000) * this.rate);
    this.at = t;
  }
}
