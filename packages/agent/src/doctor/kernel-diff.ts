/**
 * Pure: what differs between the desired state this agent computes from the store's view and what the
 * kernel holds (`Dataplane.readState()`), one finding per difference, named for people: overlay
 * namespaces missing or left over, br0 and vxlan0 missing or with other settings, every FDB and
 * neighbour entry missing, pointing elsewhere or left over, endpoint interfaces missing or unfinished,
 * local endpoints whose sandbox is gone, egress interfaces, the gateway bridge and its iptables rules.
 *
 * The expectations are the data plane's contract as packages/dataplane/README.md states it (names,
 * completion markers `kvnet:ep:<endpoint id>:…` / `kvnet:eg:<prefix>:<endpoint id>:…`, permanent
 * neighbour entries, `self` FDB entries, the gateway bridge's chains). The reconcile loop repairs drift
 * on its own within its periodic re-apply (reconciler.ts); doctor says what it sees now.
 */

import { BRIDGE_IFNAME, egressHostIfname, iptablesChains, overlayNetnsName, overlayVethName, VXLAN_IFNAME, type ActualLink, type ActualState, type DesiredState, type SandboxProbe } from '@kvnet/dataplane';
import type { DoctorFinding } from './report.ts';

/** How to name things for people. */
export interface DiffNames {
  /** `multi` for a network id (or the short id when unknown). */
  network(nid: string): string;
  /** `c1` for an endpoint id. */
  endpoint(nid: string, eid: string): string;
  /** `c2 on h2` for a peer address of a network. */
  peer(nid: string, ip: string): string;
}

export interface KernelDiffInput {
  readonly desired: DesiredState;
  readonly actual: ActualState;
  /** The data plane's name prefix. */
  readonly prefix: string;
  /** This host's VTEP (the VXLAN source address). */
  readonly vtep: string;
  readonly vxlanPort: number;
  /** The gateway bridge's name, or undefined with `--gateway-bridge none`. */
  readonly gatewayBridge: string | undefined;
  /** What each desired sandbox path turned out to be. */
  readonly sandboxes: ReadonlyMap<string, SandboxProbe>;
  readonly names: DiffNames;
}

const REPAIR = 'the agent repairs this on its next periodic re-apply (within 30 s); if it stays, look for data plane errors in the agent log';

/** Every difference between desired and actual kernel state, as findings with status `fail`. */
export function kernelDiff(input: KernelDiffInput): DoctorFinding[] {
  const { desired, actual, prefix, names } = input;
  const out: DoctorFinding[] = [];
  const fail = (network: string | undefined, summary: string, fix = REPAIR): void => {
    out.push({ area: 'kernel', status: 'fail', summary, fix, ...(network ? { network } : {}) });
  };
  const actualById = new Map(actual.networks.map((n) => [n.id, n]));
  const desiredIds = new Set(desired.networks.map((n) => n.id));

  for (const a of actual.networks) {
    if (!desiredIds.has(a.id)) {
      fail(names.network(a.id), `overlay namespace ${a.netns} (network ${names.network(a.id)}) is left over: no local endpoint needs it`, 'the agent removes it on its next re-apply; if it stays, remove it with `ip netns del` after checking nothing uses it');
    }
  }

  for (const net of desired.networks) {
    const netName = names.network(net.id);
    const ns = overlayNetnsName(prefix, net.id);
    const a = actualById.get(net.id);
    if (!a) {
      fail(netName, `network ${netName}: overlay namespace ${ns} is missing (it has ${net.endpoints.length} local endpoint(s))`);
      continue;
    }
    if (a.readError) {
      fail(netName, `network ${netName}: overlay namespace ${ns} cannot be read: ${a.readError}`);
      continue;
    }
    const link = (name: string): ActualLink | undefined => a.links.find((l) => l.name === name);

    const br = link(BRIDGE_IFNAME);
    if (!br || br.kind !== 'bridge') fail(netName, `network ${netName}: ${BRIDGE_IFNAME} is ${br ? `a ${br.kind ?? 'device'}, not a bridge` : 'missing'} in ${ns}`);
    else {
      if (!br.up) fail(netName, `network ${netName}: ${BRIDGE_IFNAME} is down in ${ns}`);
      for (const s of net.subnets) {
        const len = s.cidr.split('/')[1];
        const want = `${s.gateway}/${len}`;
        if (!br.addresses.includes(want)) fail(netName, `network ${netName}: gateway address ${want} is missing from ${BRIDGE_IFNAME} in ${ns}`);
      }
    }

    const vx = link(VXLAN_IFNAME);
    if (!vx || !vx.vxlan) fail(netName, `network ${netName}: ${VXLAN_IFNAME} (VNI ${net.vni}) is missing in ${ns}`);
    else {
      const v = vx.vxlan;
      const wrong: string[] = [];
      if (v.vni !== net.vni) wrong.push(`VNI ${v.vni} instead of ${net.vni}`);
      if (v.port !== input.vxlanPort) wrong.push(`UDP port ${v.port} instead of ${input.vxlanPort}`);
      if (v.local !== input.vtep) wrong.push(`local address ${v.local ?? 'unset'} instead of ${input.vtep}`);
      if (v.learning) wrong.push('learning on');
      if (!v.proxy) wrong.push('ARP proxy off');
      if (wrong.length > 0) fail(netName, `network ${netName}: ${VXLAN_IFNAME} in ${ns} has ${wrong.join(', ')}`);
      if (vx.master !== BRIDGE_IFNAME) fail(netName, `network ${netName}: ${VXLAN_IFNAME} is not attached to ${BRIDGE_IFNAME} in ${ns}`);
      if (!vx.up) fail(netName, `network ${netName}: ${VXLAN_IFNAME} is down in ${ns}`);
    }

    // Peers: one permanent neighbour entry per address (ip → mac; ARP and NDP) and one FDB entry (mac → vtep) each.
    const wantFdb = new Map<string, { vtep: string; ip: string }>();
    const wantNeigh = new Map<string, string>();
    for (const p of net.peers) {
      const mac = p.mac.toLowerCase();
      const addresses = [p.ip, p.ipv6].filter((x): x is string => x !== undefined);
      if (!wantFdb.has(mac)) wantFdb.set(mac, { vtep: p.vtep, ip: addresses[0] ?? mac });
      for (const ip of addresses) if (!wantNeigh.has(ip)) wantNeigh.set(ip, mac);
    }
    const haveFdb = new Map(a.fdb.map((f) => [f.mac.toLowerCase(), f.dst]));
    for (const [mac, want] of wantFdb) {
      const dst = haveFdb.get(mac);
      const who = names.peer(net.id, want.ip);
      if (dst === undefined) fail(netName, `network ${netName}: FDB entry ${mac} → ${want.vtep} (${who}) is missing from ${VXLAN_IFNAME} in ${ns}`);
      else if (dst !== want.vtep) fail(netName, `network ${netName}: FDB entry ${mac} (${who}) points to ${dst} instead of ${want.vtep}`);
    }
    for (const [mac, dst] of haveFdb) {
      if (!wantFdb.has(mac)) fail(netName, `network ${netName}: FDB entry ${mac} → ${dst} on ${VXLAN_IFNAME} in ${ns} is left over (no such remote endpoint)`);
    }
    const haveNeigh = new Map(a.neighbours.map((n) => [n.ip, n]));
    for (const [ip, mac] of wantNeigh) {
      const n = haveNeigh.get(ip);
      const who = names.peer(net.id, ip);
      if (!n) fail(netName, `network ${netName}: neighbour entry ${ip} → ${mac} (${who}) is missing from ${VXLAN_IFNAME} in ${ns}`);
      else if (n.mac.toLowerCase() !== mac) fail(netName, `network ${netName}: neighbour entry ${ip} (${who}) has MAC ${n.mac} instead of ${mac}`);
      else if (!n.permanent) fail(netName, `network ${netName}: neighbour entry ${ip} → ${mac} (${who}) is not permanent`);
    }
    for (const [ip, n] of haveNeigh) {
      if (!wantNeigh.has(ip)) fail(netName, `network ${netName}: neighbour entry ${ip} → ${n.mac} on ${VXLAN_IFNAME} in ${ns} is left over (no such remote endpoint)`);
    }

    // Endpoints: the overlay side of each veth, finished (marked), on br0, up.
    const wantVeths = new Set<string>();
    for (const ep of net.endpoints) {
      const epName = names.endpoint(net.id, ep.id);
      const veth = overlayVethName(ep.id);
      wantVeths.add(veth);
      const sandbox = ep.sandbox?.path;
      const probe = sandbox ? input.sandboxes.get(sandbox) : undefined;
      if (sandbox && probe && probe !== 'netns') {
        out.push({
          area: 'sandbox',
          status: 'fail',
          network: netName,
          summary: `network ${netName}: endpoint ${epName}'s sandbox ${sandbox} ${probe === 'missing' ? 'is gone' : 'is not a network namespace'}`,
          fix: `if the container is gone, disconnect the endpoint: kvnet network disconnect ${netName} ${epName}`,
        });
      }
      const l = link(veth);
      if (!l) fail(netName, `network ${netName}: endpoint ${epName}'s interface ${veth} is missing in ${ns}`);
      else if (!l.alias?.startsWith(`kvnet:ep:${ep.id}:`)) fail(netName, `network ${netName}: endpoint ${epName}'s interface ${veth} in ${ns} is unfinished (no completion marker)`);
      else {
        if (l.master !== BRIDGE_IFNAME) fail(netName, `network ${netName}: endpoint ${epName}'s interface ${veth} is not attached to ${BRIDGE_IFNAME}`);
        if (!l.up) fail(netName, `network ${netName}: endpoint ${epName}'s interface ${veth} is down`);
      }
    }
    for (const l of a.links) {
      if (l.kind === 'veth' && !wantVeths.has(l.name)) fail(netName, `network ${netName}: interface ${l.name} in ${ns} belongs to no local endpoint (left over)`);
    }
  }

  // Egress: one host-side veth per endpoint with an egress address, on the gateway bridge.
  const bridgeName = input.gatewayBridge;
  const wantEgress = new Map<string, { nid: string; eid: string }>();
  for (const net of desired.networks) for (const ep of net.endpoints) if (ep.sandbox?.egress) wantEgress.set(egressHostIfname(prefix, ep.id), { nid: net.id, eid: ep.id });
  for (const [ifname, { nid, eid }] of wantEgress) {
    const netName = names.network(nid);
    const l = actual.host.links.find((x) => x.name === ifname);
    const who = `endpoint ${names.endpoint(nid, eid)} of network ${netName}`;
    if (!l) fail(netName, `${who}: egress interface ${ifname} is missing on the host`);
    else if (!l.alias?.startsWith(`kvnet:eg:${prefix}:${eid}:`)) fail(netName, `${who}: egress interface ${ifname} is unfinished (no completion marker)`);
    else if (l.master !== bridgeName) fail(netName, `${who}: egress interface ${ifname} is not attached to ${bridgeName ?? 'a gateway bridge'}`);
  }
  for (const l of actual.host.links) {
    if (!wantEgress.has(l.name)) fail(undefined, `host interface ${l.name} (egress) belongs to no local endpoint (left over)`);
  }
  if (bridgeName && wantEgress.size > 0) {
    const gw = actual.host.gatewayBridge;
    if (!gw) fail(undefined, `gateway bridge ${bridgeName} is missing (${wantEgress.size} endpoint(s) need it for their way out)`);
    else {
      if (!gw.up) fail(undefined, `gateway bridge ${bridgeName} is down`);
      if (!gw.subnet) fail(undefined, `gateway bridge ${bridgeName} has no IPv4 address`);
      else out.push(...iptablesDiff(prefix, bridgeName, gw.subnet, actual.host.iptables));
    }
  }
  return out;
}

/**
 * The gateway bridge's rules as packages/dataplane/README.md ("Gateway bridge") describes them: no
 * traffic between its ports, out of it to anywhere, replies back in, masquerade of its subnet — each
 * in the prefix's own chain, with the jumps from FORWARD and POSTROUTING.
 */
export function iptablesDiff(prefix: string, bridge: string, subnet: string, rules: ActualState['host']['iptables']): DoctorFinding[] {
  if (!rules) return [{ area: 'iptables', status: 'skip', summary: 'iptables rules were not read' }];
  const { forward, postrouting } = iptablesChains(prefix);
  const want = {
    filter: [
      `-A ${forward} -i ${bridge} -o ${bridge} -j DROP`,
      `-A ${forward} -i ${bridge} ! -o ${bridge} -j ACCEPT`,
      `-A ${forward} -o ${bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      `-A FORWARD -j ${forward}`,
    ],
    nat: [`-A ${postrouting} -s ${subnet} ! -o ${bridge} -j MASQUERADE`, `-A POSTROUTING -j ${postrouting}`],
  };
  const out: DoctorFinding[] = [];
  for (const table of ['filter', 'nat'] as const) {
    for (const rule of want[table]) {
      if (!rules[table].includes(rule)) {
        out.push({ area: 'iptables', status: 'fail', summary: `iptables rule missing (table ${table}): ${rule}`, fix: 'the agent re-creates the gateway bridge rules when it restarts or sets up the bridge again; restart the agent if it stays' });
      }
    }
  }
  if (out.length === 0) out.push({ area: 'iptables', status: 'ok', summary: `gateway bridge ${bridge} (${subnet}): ${want.filter.length + want.nat.length} iptables rules in place` });
  return out;
}
