/**
 * Pure: the ADD result for an attachment, in the configuration's spec version, and the comparison a
 * CHECK makes between the previous result, the agent's record and what the container holds.
 *
 * An attachment gives the container:
 *
 * | interface | address (`ips`) | gateway | notes |
 * |---|---|---|---|
 * | `CNI_IFNAME` (eth0) | the endpoint's overlay address | the network's gateway | MAC `02:42:` + the address bytes |
 * | `eth1` (non-internal networks) | its gateway bridge address | the bridge's address | carries the default route (`routes`) |
 *
 * Both are listed with their index, MAC and (1.1.0) MTU and the container's netns as `sandbox`, so a
 * runtime shows the overlay address as the container's (go-cni and podman take the addresses of the
 * interface named `CNI_IFNAME`). The host-side ends are not listed: they live in the network's overlay
 * namespace, not in the host's. A `prevResult` (kvnet after another interface plugin) is kept, with
 * kvnet's interfaces appended and its address indexes shifted.
 */

import type { CniAttachmentView } from '@kvnet/agent';
import { compareVersions, type CniIpConfig, type CniResult, type CniRoute, type CniVersion, type CniDns, type CniInterface } from './spec.ts';

/** What the result needs besides the attachment. */
export interface ResultOptions {
  readonly cniVersion: CniVersion;
  /** `CNI_IFNAME`. */
  readonly ifname: string;
  readonly dns?: CniDns;
  readonly prevResult?: CniResult;
}

const DEFAULT_ROUTE = '0.0.0.0/0';

function ipFor(version: CniVersion, ip: Omit<CniIpConfig, 'version'>): CniIpConfig {
  // 0.3.x/0.4.0 results carry the address family; 1.x dropped it.
  const { address, gateway, interface: index } = ip;
  return {
    ...(compareVersions(version, '1.0.0') < 0 ? { version: address.includes(':') ? '6' : '4' } : {}),
    address,
    ...(gateway !== undefined ? { gateway } : {}),
    ...(index !== undefined ? { interface: index } : {}),
  };
}

function interfaceFor(version: CniVersion, i: CniInterface): CniInterface {
  const { mtu, ...rest } = i;
  return compareVersions(version, '1.1.0') >= 0 && mtu !== undefined ? { ...rest, mtu } : rest;
}

/** The ADD result of `att` (see the table above). */
export function buildResult(att: CniAttachmentView, opts: ResultOptions): CniResult {
  const { cniVersion: version, ifname } = opts;
  const prev = opts.prevResult;
  const base = prev?.interfaces?.length ?? 0;
  const sandboxPath = att.endpoint.netns!;
  const observed = new Map((att.sandbox?.interfaces ?? []).map((i) => [i.name, i]));
  const interfaces: CniInterface[] = [];
  const ips: CniIpConfig[] = [];
  const routes: CniRoute[] = [];
  const main = observed.get(ifname);
  interfaces.push({ name: ifname, mac: att.endpoint.mac, ...(main ? { mtu: main.mtu } : {}), sandbox: sandboxPath });
  ips.push({ address: att.endpoint.address, gateway: att.network.gateway, interface: base });
  const egress = att.egress;
  const egressLink = egress ? observed.get(egress.ifname) : undefined;
  if (egress && egressLink) {
    interfaces.push({ name: egress.ifname, mac: egressLink.mac, mtu: egressLink.mtu, sandbox: sandboxPath });
    ips.push({ address: egress.address, gateway: egress.gateway, interface: base + 1 });
    routes.push({ dst: DEFAULT_ROUTE, gw: egress.gateway });
  }
  // The network configuration's own `dns` wins (the operator chose it), then kvnet's resolver, then an earlier plugin's.
  const dns = opts.dns ?? att.dns ?? prev?.dns;
  return {
    cniVersion: version,
    interfaces: [...(prev?.interfaces ?? []), ...interfaces].map((i) => interfaceFor(version, i)),
    ips: [...(prev?.ips ?? []), ...ips].map((ip) => ipFor(version, ip)),
    routes: [...(prev?.routes ?? []), ...routes],
    ...(dns && Object.keys(dns).length > 0 ? { dns } : {}),
  };
}

/** A previous result re-expressed in `version` (a chained DEL/CHECK may be handed an older one). */
export function convertResult(result: CniResult, version: CniVersion): CniResult {
  return {
    ...result,
    cniVersion: version,
    ...(result.interfaces ? { interfaces: result.interfaces.map((i) => interfaceFor(version, i)) } : {}),
    ...(result.ips ? { ips: result.ips.map((ip) => ipFor(version, ip)) } : {}),
  };
}

/**
 * CHECK: what is wrong with the attachment, compared with the previous result and the agent's record;
 * empty when nothing is. Routes and interfaces a later plugin added are not kvnet's business; kvnet's
 * own (the `CNI_IFNAME` interface with its address and MAC, the egress interface with its address, the
 * default route through it) must be there, up, as recorded.
 */
export function checkAttachment(att: CniAttachmentView, prev: CniResult, env: { readonly netns: string; readonly ifname: string }): string[] {
  const problems: string[] = [];
  const ep = att.endpoint;
  if (ep.netns !== env.netns) problems.push(`the attachment is recorded for netns ${ep.netns ?? '(none)'}, not CNI_NETNS ${env.netns}`);
  const prevIndex = (prev.interfaces ?? []).findIndex((i) => i.name === env.ifname && (i.sandbox ?? '') !== '');
  const prevAddresses = (prev.ips ?? []).filter((ip) => ip.interface === prevIndex).map((ip) => ip.address);
  if (prevIndex < 0) problems.push(`prevResult lists no interface ${env.ifname} in a sandbox`);
  else if (!prevAddresses.includes(ep.address)) problems.push(`prevResult gives ${env.ifname} ${prevAddresses.join(', ') || 'no address'}, but the agent records ${ep.address}`);
  if (!att.sandbox) {
    problems.push(`network namespace ${ep.netns} is gone`);
    return problems;
  }
  const links = new Map(att.sandbox.interfaces.map((i) => [i.name, i]));
  const main = links.get(env.ifname);
  if (!main) problems.push(`interface ${env.ifname} is missing in netns ${ep.netns}`);
  else {
    if (!main.up) problems.push(`interface ${env.ifname} in netns ${ep.netns} is down`);
    if (main.mac !== ep.mac.toLowerCase()) problems.push(`interface ${env.ifname} in netns ${ep.netns} has MAC ${main.mac}, not ${ep.mac}`);
    if (!main.addresses.includes(ep.address)) problems.push(`interface ${env.ifname} in netns ${ep.netns} has ${main.addresses.join(', ') || 'no IPv4 address'}, not ${ep.address}`);
  }
  const egress = att.egress;
  const prevHasEgress = egress !== undefined && (prev.interfaces ?? []).some((i) => i.name === egress.ifname && (i.sandbox ?? '') !== '');
  if (egress && prevHasEgress) {
    const link = links.get(egress.ifname);
    if (!link) problems.push(`gateway bridge interface ${egress.ifname} is missing in netns ${ep.netns}`);
    else if (!link.addresses.includes(egress.address)) problems.push(`gateway bridge interface ${egress.ifname} in netns ${ep.netns} has ${link.addresses.join(', ') || 'no IPv4 address'}, not ${egress.address}`);
    const wantsDefault = (prev.routes ?? []).some((r) => r.dst === DEFAULT_ROUTE && r.gw === egress.gateway);
    if (wantsDefault && !att.sandbox.routes.some((r) => r.dst === DEFAULT_ROUTE && r.gateway === egress.gateway)) {
      problems.push(`netns ${ep.netns} has no default route via ${egress.gateway}`);
    }
  }
  return problems;
}
