/**
 * One shard of a pool's address bitmap: a fixed number of bits (at most {@link SHARD_ADDRESSES}),
 * bit `i` set when the address at ordinal `shard·size + i` is allocated. Bit 0 is the most
 * significant bit of byte 0 (libnetwork's bitseq order). Stored base64-encoded.
 */

/** Addresses per shard key: 256 bits = 32 bytes of bitmap, ~100 bytes of JSON per key. */
export const SHARD_ADDRESSES = 256;

export class AddressBitmap {
  readonly bytes: Uint8Array;

  constructor(
    /** Number of addresses this shard covers (1 … {@link SHARD_ADDRESSES}). */
    readonly size: number,
    bytes?: Uint8Array,
  ) {
    if (!Number.isInteger(size) || size < 1 || size > SHARD_ADDRESSES) throw new RangeError(`bitmap size ${size} out of range`);
    const len = Math.ceil(size / 8);
    if (bytes && bytes.length !== len) throw new RangeError(`bitmap of ${size} bits needs ${len} bytes, got ${bytes.length}`);
    this.bytes = bytes ? Uint8Array.from(bytes) : new Uint8Array(len);
  }

  static decode(base64: string, size: number): AddressBitmap {
    const bytes = Buffer.from(base64, 'base64');
    const bm = new AddressBitmap(size, bytes);
    // bits past `size` in the last byte must be clear
    for (let i = size; i < bm.bytes.length * 8; i++) {
      if (bm.bytes[i >> 3]! & (0x80 >> (i & 7))) throw new RangeError(`bit ${i} set past the end (${size})`);
    }
    return bm;
  }

  encode(): string {
    return Buffer.from(this.bytes).toString('base64');
  }

  clone(): AddressBitmap {
    return new AddressBitmap(this.size, this.bytes);
  }

  private check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) throw new RangeError(`bit ${i} outside 0…${this.size - 1}`);
  }

  has(i: number): boolean {
    this.check(i);
    return (this.bytes[i >> 3]! & (0x80 >> (i & 7))) !== 0;
  }

  set(i: number): void {
    this.check(i);
    this.bytes[i >> 3]! |= 0x80 >> (i & 7);
  }

  clear(i: number): void {
    this.check(i);
    this.bytes[i >> 3]! &= ~(0x80 >> (i & 7));
  }

  /** Number of set bits. */
  count(): number {
    let n = 0;
    for (const b of this.bytes) {
      let x = b;
      while (x) {
        x &= x - 1;
        n++;
      }
    }
    return n;
  }

  /** Indexes of set bits, ascending. */
  *setBits(): Generator<number> {
    for (let byte = 0; byte < this.bytes.length; byte++) {
      const b = this.bytes[byte]!;
      if (b === 0) continue;
      for (let bit = 0; bit < 8; bit++) if (b & (0x80 >> bit)) yield byte * 8 + bit;
    }
  }

  /**
   * The first clear bit in `[from, to]` (inclusive) for which `skip` is false, or -1. Whole bytes
   * of set bits are skipped at once.
   */
  nextClear(from: number, to: number, skip?: (i: number) => boolean): number {
    const end = Math.min(to, this.size - 1);
    for (let i = Math.max(0, from); i <= end; ) {
      if ((i & 7) === 0 && this.bytes[i >> 3] === 0xff) {
        i += 8;
        continue;
      }
      if ((this.bytes[i >> 3]! & (0x80 >> (i & 7))) === 0 && !skip?.(i)) return i;
      i++;
    }
    return -1;
  }
}
