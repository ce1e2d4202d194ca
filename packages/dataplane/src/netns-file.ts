/**
 * What a path is as a network namespace: `ip netns add` makes a bind mount of a namespace (an nsfs file);
 * the same path before the mount is done, after `ip netns del`, or seen from outside the mount namespace
 * that made it (a Docker SandboxKey) is a plain file, and must not be taken for the namespace.
 */

import { statfsSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import type { SandboxProbe } from './dataplane.ts';

/** statfs(2) f_type of a namespace file (nsfs). */
export const NSFS_MAGIC = 0x6e736673;

/** `netns` when `path` is a namespace now, `missing` when there is nothing there, `not-netns` otherwise. */
export function probeNetns(path: string): SandboxProbe {
  try {
    return Number(statfsSync(path).type) === NSFS_MAGIC ? 'netns' : 'not-netns';
  } catch {
    return 'missing';
  }
}

/** {@link probeNetns} without blocking the event loop. */
export async function probeNetnsAsync(path: string): Promise<SandboxProbe> {
  try {
    return Number((await statfs(path)).type) === NSFS_MAGIC ? 'netns' : 'not-netns';
  } catch {
    return 'missing';
  }
}

/** Whether `path` is a network namespace right now (exists and is an nsfs mount). */
export function isNetns(path: string): boolean {
  return probeNetns(path) === 'netns';
}
