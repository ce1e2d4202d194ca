/**
 * The MTU chain on this host: the underlay interface holding the VTEP address, then per network
 * vxlan0, br0 and each endpoint's overlay-side veth. VXLAN over IPv4 adds 50 bytes, so the overlay MTU
 * may be at most the underlay's − 50 — otherwise full-size packets leave this host and are dropped.
 * A network's own MTU (`mtu` in its desired state) wins over the data plane's default (underlay − 50).
 * The path beyond this host is checked by the full-size ping of the VXLAN probe (vxlan-probe.ts).
 */

import { execFile } from 'node:child_process';
import { BRIDGE_IFNAME, overlayNetnsName, overlayVethName, VXLAN_IFNAME, vxlanOverhead, type ActualState, type DesiredState } from '@kvnet/dataplane';
import type { DiffNames } from './kernel-diff.ts';
import type { DoctorFinding } from './report.ts';

/** The interface of this network namespace that holds `ip`, with its MTU. */
export interface UnderlayLink {
  readonly ifname: string;
  readonly mtu: number;
}

/** Finds the interface holding `ip` (`ip -j -4 addr show` in this process's network namespace). */
export function findUnderlay(ip: string, signal?: AbortSignal): Promise<UnderlayLink | undefined> {
  return new Promise((resolve) => {
    execFile('ip', ['-j', '-4', 'addr', 'show'], { timeout: 10_000, ...(signal ? { signal } : {}) }, (err, stdout) => {
      if (err) return resolve(undefined);
      try {
        const links = JSON.parse(stdout) as Array<{ ifname: string; mtu: number; addr_info?: Array<{ local?: string }> }>;
        const l = links.find((x) => x.addr_info?.some((a) => a.local === ip));
        resolve(l ? { ifname: l.ifname, mtu: l.mtu } : undefined);
      } catch {
        resolve(undefined);
      }
    });
  });
}

/** Pure: the MTU findings for the desired networks that exist in `actual`. `defaultMtu` is the data plane's overlay MTU. */
export function mtuFindings(input: {
  readonly underlay: UnderlayLink | undefined;
  readonly vtep: string;
  readonly desired: DesiredState;
  readonly actual: ActualState;
  readonly prefix: string;
  readonly defaultMtu: number;
  readonly names: DiffNames;
}): DoctorFinding[] {
  const { underlay, desired, actual, names } = input;
  const out: DoctorFinding[] = [];
  if (!underlay) {
    out.push({ area: 'mtu', status: 'warn', summary: `no interface in this host's network namespace holds the VTEP address ${input.vtep}; the underlay MTU cannot be checked`, fix: 'check --cluster-advertise' });
  }
  // 50 bytes of VXLAN over an IPv4 underlay, 70 over IPv6
  const overhead = vxlanOverhead(input.vtep.includes(':') ? 6 : 4);
  const room = underlay ? underlay.mtu - overhead : undefined;
  let checked = 0;
  for (const net of desired.networks) {
    const a = actual.networks.find((n) => n.id === net.id);
    if (!a || a.readError) continue;
    const name = names.network(net.id);
    const want = net.mtu ?? input.defaultMtu;
    const ns = overlayNetnsName(input.prefix, net.id);
    const wrong: string[] = [];
    for (const ifname of [VXLAN_IFNAME, BRIDGE_IFNAME, ...net.endpoints.map((e) => overlayVethName(e.id))]) {
      const l = a.links.find((x) => x.name === ifname);
      if (l && l.mtu !== want) wrong.push(`${ifname} ${l.mtu}`);
    }
    if (wrong.length > 0) {
      out.push({ area: 'mtu', status: 'fail', network: name, summary: `network ${name}: overlay MTU should be ${want}, but in ${ns}: ${wrong.join(', ')}`, fix: 'the agent sets it again on its next periodic re-apply (within 30 s)' });
    }
    if (room !== undefined && want > room) {
      out.push({
        area: 'mtu',
        status: 'fail',
        network: name,
        summary: `network ${name}: overlay MTU ${want} + ${overhead} bytes of VXLAN exceeds underlay ${underlay!.ifname}'s MTU ${underlay!.mtu}: packets over ${room} bytes are dropped`,
        fix: `raise ${underlay!.ifname}'s MTU to at least ${want + overhead}, or give the network an MTU of at most ${room}`,
      });
    }
    checked++;
  }
  if (underlay && out.length === 0) {
    out.push({ area: 'mtu', status: 'ok', summary: `underlay ${underlay.ifname} MTU ${underlay.mtu}; ${checked} overlay network(s) within it (≤ ${room})` });
  }
  return out;
}
