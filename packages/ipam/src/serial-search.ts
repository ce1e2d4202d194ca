/**
 * Serial search over a sharded address space: the first free ordinal after the last one allocated,
 * wrapping from the end of the dynamic range to its start, so a just-released address is handed out
 * again only after every other free one. Pure: shards come from a lookup, and the search says which
 * shard it needs when that one has not been read yet.
 */

import type { AddressBitmap } from './address-bitmap.ts';

export interface SearchSpace {
  /** First and last ordinal (inclusive) dynamic addresses may come from (the ip-range, or the pool). */
  readonly lo: bigint;
  readonly hi: bigint;
  /** Addresses per shard. */
  readonly shardSize: number;
  /** Ordinals never handed out dynamically (network, broadcast, gateway, aux). */
  readonly reserved: ReadonlySet<bigint>;
}

/** A shard as the search sees it: a bitmap, `null` when no key exists (nothing allocated), `undefined` when unknown. */
export type ShardView = AddressBitmap | null | undefined;

export type SearchResult =
  | { readonly kind: 'found'; readonly ordinal: bigint }
  | { readonly kind: 'exhausted' }
  | { readonly kind: 'need'; readonly shard: bigint };

export function shardOf(ordinal: bigint, shardSize: number): bigint {
  return ordinal / BigInt(shardSize);
}

/**
 * The next ordinal to hand out after `last` (the previous dynamic allocation; `undefined` or a value
 * outside `[lo, hi]` starts at `lo`). Visits `last+1 … hi`, then `lo … last`.
 */
export function serialSearch(space: SearchSpace, last: bigint | undefined, lookup: (shard: bigint) => ShardView): SearchResult {
  const { lo, hi } = space;
  if (hi < lo) return { kind: 'exhausted' };
  const segments: Array<[bigint, bigint]> =
    last === undefined || last < lo || last > hi ? [[lo, hi]] : last === hi ? [[lo, hi]] : [[last + 1n, hi], [lo, last]];
  for (const [a, b] of segments) {
    const r = searchSegment(space, a, b, lookup);
    if (r) return r;
  }
  return { kind: 'exhausted' };
}

function searchSegment(space: SearchSpace, a: bigint, b: bigint, lookup: (shard: bigint) => ShardView): SearchResult | undefined {
  const size = BigInt(space.shardSize);
  for (let idx = a / size; idx <= b / size; idx++) {
    const start = idx * size;
    const from = Number((a > start ? a : start) - start);
    const to = Number((b < start + size - 1n ? b : start + size - 1n) - start);
    const reservedHere = localReserved(space.reserved, start, size);
    const view = lookup(idx);
    if (view === undefined) return { kind: 'need', shard: idx };
    let found = -1;
    if (view === null) {
      for (let i = from; i <= to; i++) {
        if (!reservedHere.has(i)) {
          found = i;
          break;
        }
      }
    } else {
      found = view.nextClear(from, to, reservedHere.size ? (i) => reservedHere.has(i) : undefined);
    }
    if (found !== -1) return { kind: 'found', ordinal: start + BigInt(found) };
  }
  return undefined;
}

function localReserved(reserved: ReadonlySet<bigint>, start: bigint, size: bigint): Set<number> {
  const out = new Set<number>();
  for (const r of reserved) if (r >= start && r < start + size) out.add(Number(r - start));
  return out;
}
