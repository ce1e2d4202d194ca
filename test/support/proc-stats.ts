/**
 * CPU and memory of processes from /proc, for the harness and the benchmarks that measure agents (scale, events):
 * per-thread run time from schedstat (nanoseconds; stat's 10 ms ticks would quantise a 1 ms event),
 * the time of waited-for children, and the live children's own (an agent's long-lived batch processes).
 */

import { readFileSync, readdirSync } from 'node:fs';

const CLK_TCK = 100; // USER_HZ on Linux (getconf CLK_TCK)

/** CPU of a process in ms: its own (user+system) and that of its waited-for children (the `ip`/`bridge` runs). */
export interface Cpu {
  readonly self: number;
  readonly children: number;
}

/**
 * A process's CPU in ms: its own (every thread's run time from schedstat, in nanoseconds: the 10 ms
 * ticks of stat would quantise a 1 ms event) and its waited-for children's (cutime+cstime, ticks:
 * that is all the kernel keeps of them).
 */
export function statCpu(pid: number): Cpu {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = (i: number): number => (Number(f[i]) * 1000) / CLK_TCK;
  const threads = threadCpuMs(pid);
  return { self: threads.main + threads.other, children: ticks(13) + ticks(14) };
}

/** A process's run time in ms (schedstat), split into its main thread's and that of all its other threads (V8's and libuv's helpers). */
export function threadCpuMs(pid: number): { main: number; other: number } {
  let main = 0;
  let other = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    let ns: number;
    try {
      ns = Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      continue; // the thread ended: its time is gone from the sum (a thread pool's worker, rarely)
    }
    if (task === String(pid)) main += ns / 1e6;
    else other += ns / 1e6;
  }
  return { main, other };
}

/** The live children of a process (the agent's long-lived ip/bridge batch processes among them). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      for (const c of readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').split(' ')) if (c.trim()) out.push(Number(c));
    }
  } catch {
    // gone
  }
  return out;
}

/**
 * An agent's CPU: its own, that of the processes it ran and waited for, and that of its live children
 * (a long-lived batch process's time reaches the parent's counters only when it ends).
 */
export function cpuOf(pid: number | undefined): Cpu {
  if (!pid) return { self: 0, children: 0 };
  try {
    const own = statCpu(pid);
    let live = 0;
    for (const c of childrenOf(pid)) {
      try {
        const x = statCpu(c);
        live += x.self + x.children;
      } catch {
        // ended meanwhile: its time is in `own.children` at the next reading
      }
    }
    return { self: own.self, children: own.children + live };
  } catch {
    return { self: 0, children: 0 };
  }
}

/** VmRSS in MiB of a process's live children. */
export function childrenRssMib(pid: number | undefined): number {
  if (!pid) return 0;
  let kib = 0;
  for (const c of childrenOf(pid)) {
    try {
      kib += Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${c}/status`, 'utf8'))?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return kib / 1024;
}

/** A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, …) in MiB; undefined when the process is gone. */
export function statusMib(pid: number | undefined, field: 'VmRSS' | 'RssAnon' | 'RssFile'): number | undefined {
  if (!pid) return undefined;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** VmRSS in MiB. */
export function rssMib(pid: number | undefined): number | undefined {
  return statusMib(pid, 'VmRSS');
}

/**
 * A process's private (anonymous) resident memory in MiB: VmRSS less the file pages it maps (the
 * node binary and its libraries, shared by every Node process on the host: ≈ 45 MiB of an agent's
 * VmRSS on the development machine). What one more agent costs a host is about this plus its share
 * of those pages.
 */
export function rssAnonMib(pid: number | undefined): number | undefined {
  return statusMib(pid, 'RssAnon');
}
