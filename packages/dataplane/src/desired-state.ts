/**
 * Validation of a desired state and everything derived from it (names, MACs, MTUs, routes, config
 * digests). What the kernel would refuse is refused here, with an error naming the object, so a batch
 * never carries a line iproute2 cannot parse (a parse error aborts a whole `-batch`, even with `-force`).
 * A refused object is left in the kernel as it is; the planner does not touch it.
 */

import { createHash } from 'node:crypto';
import type { ResolvedConfig } from './config.ts';
import { MAX_MTU, MIN_MTU } from './config.ts';
import type { ActualState, DesiredEndpoint, DesiredNetwork, DesiredState, NetnsTarget } from './dataplane.ts';
import {
  DesiredConflictError,
  InvalidDesiredStateError,
  SandboxNotFoundError,
  type DataplaneError,
  type DataplaneObject,
} from './errors.ts';
import {
  cidrContains,
  cidrsOverlap,
  formatIpv4,
  formatNetwork,
  isNetworkOrBroadcast,
  macFromIpv4,
  normalizeMac,
  parseCidr,
  parseIpv4,
  type Ipv4Cidr,
} from './ipv4.ts';
import {
  egressHostIfname,
  egressMarker,
  endpointMarker,
  ID_PATTERN,
  ifnameProblem,
  netnsPathProblem,
  overlayNetnsName,
  overlayVethName,
} from './names.ts';

export const VNI_MIN = 256;
export const VNI_MAX = 16_777_215;
const DIGEST_HEX_CHARS = 12;

export interface ResolvedPeer {
  readonly ip: string;
  readonly mac: string;
  readonly vtep: string;
}

export interface ResolvedEgress {
  readonly object: DataplaneObject;
  /** Host-side link name (a port of the gateway bridge). */
  readonly hostIfname: string;
  readonly ifname: string;
  readonly address: string;
  readonly gateway: string;
  readonly bridge: string;
  readonly mtu: number;
  readonly marker: string;
}

export type ResolvedEndpointSide =
  | {
      readonly kind: 'sandbox';
      readonly path: string;
      readonly netns: NetnsTarget;
      readonly ifname: string;
      /** On-link routes for the network's other subnets. */
      readonly routes: readonly string[];
    }
  | { readonly kind: 'handoff'; readonly hostIfname: string };

export interface ResolvedEndpoint {
  readonly id: string;
  readonly object: DataplaneObject;
  /** Overlay-side veth name. */
  readonly vethName: string;
  readonly mac: string;
  readonly address: string;
  readonly mtu: number;
  readonly side: ResolvedEndpointSide;
  /** Alias written on the overlay-side veth once the endpoint is complete. */
  readonly marker: string;
  readonly egress?: ResolvedEgress;
}

export interface ResolvedNetwork {
  readonly id: string;
  readonly object: DataplaneObject;
  readonly vni: number;
  readonly netns: string;
  readonly mtu: number;
  /** Gateway addresses of the bridge, e.g. 10.0.1.1/24. */
  readonly bridgeAddresses: readonly string[];
  readonly endpoints: readonly ResolvedEndpoint[];
  /** Ids of endpoints refused here: their kernel objects stay as they are. */
  readonly keepEndpoints: ReadonlySet<string>;
  readonly peers: readonly ResolvedPeer[];
}

export interface ResolvedDesiredState {
  readonly networks: readonly ResolvedNetwork[];
  /** Ids of networks refused here: their namespaces stay as they are. */
  readonly keepNetworks: ReadonlySet<string>;
  /** Endpoint ids whose existing egress link stays as it is. */
  readonly keepEgress: ReadonlySet<string>;
  readonly errors: readonly DataplaneError[];
}

/** A sandbox path as a command target: a plain /run/netns entry is addressed by name (`ip -n`). */
export function sandboxTarget(path: string): NetnsTarget {
  const m = /^\/(?:var\/)?run\/netns\/([^/]+)$/.exec(path);
  return m ? { kind: 'name', name: m[1]! } : { kind: 'path', path };
}

function digest(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, DIGEST_HEX_CHARS);
}

interface Subnet {
  readonly cidr: Ipv4Cidr;
  readonly gateway: number;
}

/** Validates `desired` against the config and the parts of `actual` it depends on (gateway bridge, sandbox probes). */
export function resolveDesiredState(
  desired: DesiredState,
  config: ResolvedConfig,
  actual: Pick<ActualState, 'host' | 'sandboxes'>,
): ResolvedDesiredState {
  const errors: DataplaneError[] = [];
  const networks: ResolvedNetwork[] = [];
  const keepNetworks = new Set<string>();
  const keepEgress = new Set<string>();
  const seenNetworks = new Set<string>();
  const vniOwner = new Map<number, string>();
  // Host-wide names: handoff links and egress links share the host namespace; sandbox ifnames per path.
  const hostNames = new Map<string, string>();
  const sandboxNames = new Map<string, Map<string, string>>();
  const gatewaySubnet = gatewayOf(actual, config);

  for (const net of desired.networks) {
    const object: DataplaneObject = { kind: 'network', network: net.id };
    const refuse = (err: DataplaneError): void => {
      errors.push(err);
      if (ID_PATTERN.test(net.id)) {
        keepNetworks.add(net.id);
        for (const ep of net.endpoints) keepEgress.add(ep.id);
      }
    };
    if (!ID_PATTERN.test(net.id)) {
      refuse(new InvalidDesiredStateError(object, 'id', net.id, 'must be 1 to 64 lowercase letters or digits'));
      continue;
    }
    if (seenNetworks.has(net.id)) {
      errors.push(new DesiredConflictError(object, 'appears twice in the desired state; the first entry is applied'));
      continue;
    }
    seenNetworks.add(net.id);
    if (!Number.isInteger(net.vni) || net.vni < VNI_MIN || net.vni > VNI_MAX) {
      refuse(new InvalidDesiredStateError(object, 'vni', net.vni, `must be an integer in ${VNI_MIN}…${VNI_MAX}`));
      continue;
    }
    const vniHolder = vniOwner.get(net.vni);
    if (vniHolder !== undefined) {
      refuse(new DesiredConflictError({ ...object, netns: overlayNetnsName(config.prefix, net.id) }, `VNI ${net.vni} is already used by network ${vniHolder}`));
      continue;
    }
    const subnets = resolveSubnets(net, object);
    if (subnets instanceof InvalidDesiredStateError) {
      refuse(subnets);
      continue;
    }
    const mtu = net.mtu ?? config.overlayMtu;
    if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > MAX_MTU) {
      refuse(new InvalidDesiredStateError(object, 'mtu', net.mtu, `must be an integer in ${MIN_MTU}…${MAX_MTU}`));
      continue;
    }
    vniOwner.set(net.vni, net.id);

    const netns = overlayNetnsName(config.prefix, net.id);
    const endpoints: ResolvedEndpoint[] = [];
    const keepEndpoints = new Set<string>();
    const used = { ids: new Set<string>(), veths: new Map<string, string>(), ips: new Map<number, string>(), macs: new Map<string, string>() };
    for (const ep of net.endpoints) {
      const epObject: DataplaneObject = { kind: 'endpoint', network: net.id, endpoint: ep.id };
      const result = resolveEndpoint(ep, epObject, net, subnets, mtu, used);
      if (!('vethName' in result)) {
        errors.push(result.error);
        if (result.keep && ID_PATTERN.test(ep.id)) {
          keepEndpoints.add(ep.id);
          keepEgress.add(ep.id);
        }
        continue;
      }
      // Names that live outside the overlay namespace must be unique across networks too.
      const clash = claimOutsideNames(result, ep, epObject, actual, hostNames, sandboxNames);
      if (clash) {
        errors.push(clash);
        keepEndpoints.add(ep.id);
        keepEgress.add(ep.id);
        continue;
      }
      const egress = resolveEgress(ep, epObject, net, config, gatewaySubnet, hostNames);
      if (egress instanceof Error) {
        errors.push(egress);
        // An internal network must lose any egress it had; other refusals keep what exists.
        if (!net.internal) keepEgress.add(ep.id);
      }
      endpoints.push(egress && !(egress instanceof Error) ? { ...result, egress } : result);
    }

    const peers = resolvePeers(net, endpoints, config, errors);
    networks.push({
      id: net.id,
      object: { ...object, netns },
      vni: net.vni,
      netns,
      mtu,
      bridgeAddresses: subnets.map((s) => `${formatIpv4(s.gateway)}/${s.cidr.prefixLength}`),
      endpoints,
      keepEndpoints,
      peers,
    });
  }
  return { networks, keepNetworks, keepEgress, errors };
}

function gatewayOf(
  actual: Pick<ActualState, 'host'>,
  config: ResolvedConfig,
): { bridge: string; cidr: Ipv4Cidr; gateway: string } | string {
  if (!config.gateway) return 'the data plane has no gateway bridge (gatewayBridge: false)';
  const gw = actual.host.gatewayBridge;
  const cidr = gw?.subnet ? parseCidr(gw.subnet) : undefined;
  if (!gw || !cidr || !gw.gateway) return `the gateway bridge ${config.gateway.name} does not exist yet or has no IPv4 address`;
  return { bridge: gw.name, cidr, gateway: gw.gateway };
}

function resolveSubnets(net: DesiredNetwork, object: DataplaneObject): Subnet[] | InvalidDesiredStateError {
  if (net.subnets.length === 0) return new InvalidDesiredStateError(object, 'subnets', [], 'must hold at least one subnet');
  const out: Subnet[] = [];
  for (const s of net.subnets) {
    const cidr = parseCidr(s.cidr);
    if (!cidr || cidr.prefixLength > 30) {
      return new InvalidDesiredStateError(object, 'subnet', s.cidr, 'is not an IPv4 CIDR of /30 or larger');
    }
    const gateway = parseIpv4(s.gateway);
    if (gateway === undefined || !cidrContains(cidr, gateway) || isNetworkOrBroadcast(cidr, gateway)) {
      return new InvalidDesiredStateError(object, 'gateway', s.gateway, `is not a host address of subnet ${s.cidr}`);
    }
    const overlapping = out.find((o) => cidrsOverlap(o.cidr, cidr));
    if (overlapping) {
      return new InvalidDesiredStateError(object, 'subnet', s.cidr, `overlaps subnet ${formatNetwork(overlapping.cidr)} of the same network`);
    }
    out.push({ cidr, gateway });
  }
  return out;
}

type EndpointResult = ResolvedEndpoint | { error: DataplaneError; keep: boolean };

function resolveEndpoint(
  ep: DesiredEndpoint,
  object: DataplaneObject,
  net: DesiredNetwork,
  subnets: readonly Subnet[],
  mtu: number,
  used: { ids: Set<string>; veths: Map<string, string>; ips: Map<number, string>; macs: Map<string, string> },
): EndpointResult {
  const invalid = (field: string, value: unknown, reason: string): EndpointResult => ({
    error: new InvalidDesiredStateError(object, field, value, reason),
    keep: true,
  });
  if (!ID_PATTERN.test(ep.id)) return invalid('id', ep.id, 'must be 1 to 64 lowercase letters or digits');
  if (used.ids.has(ep.id)) {
    return { error: new DesiredConflictError(object, 'appears twice in the network; the first entry is applied'), keep: false };
  }
  used.ids.add(ep.id);
  const cidr = parseCidr(ep.address);
  if (!cidr) return invalid('address', ep.address, 'is not an IPv4 address with a prefix length (e.g. 10.0.1.2/24)');
  const subnet = subnets.find((s) => s.cidr.prefixLength === cidr.prefixLength && cidrContains(s.cidr, cidr.address));
  if (!subnet) return invalid('address', ep.address, `is in none of the network's subnets ${net.subnets.map((s) => s.cidr).join(', ')}`);
  if (cidr.address === subnet.gateway || isNetworkOrBroadcast(subnet.cidr, cidr.address)) {
    return invalid('address', ep.address, 'is the gateway, network or broadcast address of its subnet');
  }
  const mac = ep.mac === undefined ? macFromIpv4(cidr.address) : normalizeMac(ep.mac);
  if (!mac) return invalid('mac', ep.mac, 'is not a unicast MAC address (aa:bb:cc:dd:ee:ff)');
  if ((ep.sandbox === undefined) === (ep.handoff === undefined)) {
    return invalid('sandbox/handoff', { sandbox: ep.sandbox, handoff: ep.handoff }, 'exactly one of sandbox and handoff must be given');
  }
  const vethName = overlayVethName(ep.id);
  const taken =
    (used.veths.has(vethName) && `overlay interface name ${vethName} is already taken by endpoint ${used.veths.get(vethName)}`) ||
    (used.ips.has(cidr.address) && `address ${formatIpv4(cidr.address)} is already taken by endpoint ${used.ips.get(cidr.address)}`) ||
    (used.macs.has(mac) && `MAC ${mac} is already taken by endpoint ${used.macs.get(mac)}`);
  if (taken) return { error: new DesiredConflictError(object, taken), keep: true };
  let side: ResolvedEndpointSide;
  if (ep.sandbox) {
    const pathProblem = netnsPathProblem(ep.sandbox.path);
    if (pathProblem) return invalid('sandbox.path', ep.sandbox.path, pathProblem);
    const nameProblem = ifnameProblem(ep.sandbox.ifname);
    if (nameProblem) return invalid('sandbox.ifname', ep.sandbox.ifname, nameProblem);
    const routes = subnets.filter((s) => s !== subnet).map((s) => formatNetwork(s.cidr));
    side = { kind: 'sandbox', path: ep.sandbox.path, netns: sandboxTarget(ep.sandbox.path), ifname: ep.sandbox.ifname, routes };
  } else {
    const hostIfname = ep.handoff!.hostIfname;
    const nameProblem = ifnameProblem(hostIfname);
    if (nameProblem) return invalid('handoff.hostIfname', hostIfname, nameProblem);
    side = { kind: 'handoff', hostIfname };
  }
  used.veths.set(vethName, ep.id);
  used.ips.set(cidr.address, ep.id);
  used.macs.set(mac, ep.id);
  const address = `${formatIpv4(cidr.address)}/${cidr.prefixLength}`;
  const configDigest = digest([address, mac, mtu, side.kind === 'sandbox' ? [side.path, side.ifname, side.routes] : side.hostIfname]);
  return { id: ep.id, object, vethName, mac, address, mtu, side, marker: endpointMarker(ep.id, configDigest) };
}

/** Reserves the names an endpoint uses outside its overlay namespace; a conflict refuses the endpoint. */
function claimOutsideNames(
  ep: ResolvedEndpoint,
  desired: DesiredEndpoint,
  object: DataplaneObject,
  actual: Pick<ActualState, 'sandboxes'>,
  hostNames: Map<string, string>,
  sandboxNames: Map<string, Map<string, string>>,
): DataplaneError | undefined {
  if (ep.side.kind === 'handoff') {
    const holder = hostNames.get(ep.side.hostIfname);
    if (holder) return new DesiredConflictError({ ...object, ifname: ep.side.hostIfname }, `host interface name ${ep.side.hostIfname} is already used by ${holder}`);
    hostNames.set(ep.side.hostIfname, `endpoint ${desired.id}`);
    return undefined;
  }
  const probe = actual.sandboxes?.[ep.side.path];
  if (probe === 'missing') return new SandboxNotFoundError({ ...object, netns: ep.side.path }, ep.side.path, 'does not exist');
  if (probe === 'not-netns') return new SandboxNotFoundError({ ...object, netns: ep.side.path }, ep.side.path, 'is not a network namespace');
  const names = sandboxNames.get(ep.side.path) ?? new Map<string, string>();
  sandboxNames.set(ep.side.path, names);
  const wanted = [ep.side.ifname, ...(desired.sandbox?.egress ? [desired.sandbox.egress.ifname] : [])];
  for (const name of wanted) {
    const holder = names.get(name);
    if (holder) return new DesiredConflictError({ ...object, ifname: name, netns: ep.side.path }, `interface ${name} in sandbox ${ep.side.path} is already used by ${holder}`);
  }
  if (wanted.length === 2 && wanted[0] === wanted[1]) {
    return new DesiredConflictError({ ...object, ifname: wanted[0]! }, `sandbox interface and egress interface are both named ${wanted[0]}`);
  }
  for (const name of wanted) names.set(name, `endpoint ${desired.id}`);
  return undefined;
}

function resolveEgress(
  ep: DesiredEndpoint,
  object: DataplaneObject,
  net: DesiredNetwork,
  config: ResolvedConfig,
  gateway: ReturnType<typeof gatewayOf>,
  hostNames: Map<string, string>,
): ResolvedEgress | DataplaneError | undefined {
  const egress = ep.sandbox?.egress;
  if (!egress) return undefined;
  const egObject: DataplaneObject = { ...object, ifname: egress.ifname, netns: ep.sandbox!.path };
  if (net.internal) return new InvalidDesiredStateError(egObject, 'sandbox.egress', egress, 'is not allowed on an internal network');
  if (typeof gateway === 'string') return new InvalidDesiredStateError(egObject, 'sandbox.egress', egress, `cannot be attached: ${gateway}`);
  const nameProblem = ifnameProblem(egress.ifname);
  if (nameProblem) return new InvalidDesiredStateError(egObject, 'sandbox.egress.ifname', egress.ifname, nameProblem);
  const cidr = parseCidr(egress.address);
  const gatewayIp = parseIpv4(gateway.gateway);
  if (
    !cidr ||
    cidr.prefixLength !== gateway.cidr.prefixLength ||
    !cidrContains(gateway.cidr, cidr.address) ||
    cidr.address === gatewayIp ||
    isNetworkOrBroadcast(gateway.cidr, cidr.address)
  ) {
    return new InvalidDesiredStateError(egObject, 'sandbox.egress.address', egress.address, `is not a host address in the gateway bridge subnet ${formatNetwork(gateway.cidr)} (gateway ${gateway.gateway})`);
  }
  const hostIfname = egressHostIfname(config.prefix, ep.id);
  const holder = hostNames.get(hostIfname);
  if (holder) return new DesiredConflictError({ ...egObject, ifname: hostIfname }, `host interface name ${hostIfname} is already used by ${holder}`);
  hostNames.set(hostIfname, `egress of endpoint ${ep.id}`);
  const address = `${formatIpv4(cidr.address)}/${cidr.prefixLength}`;
  const egMtu = config.underlayMtu;
  const configDigest = digest([ep.sandbox!.path, egress.ifname, address, gateway.gateway, gateway.bridge, egMtu]);
  return {
    object: egObject,
    hostIfname,
    ifname: egress.ifname,
    address,
    gateway: gateway.gateway,
    bridge: gateway.bridge,
    mtu: egMtu,
    marker: egressMarker(config.prefix, ep.id, configDigest),
  };
}

/**
 * Validated peers, first one wins: a second peer with the same IP or MAC (a transient duplicate while
 * an endpoint moves), or one that clashes with a local endpoint, is reported and skipped.
 */
function resolvePeers(
  net: DesiredNetwork,
  endpoints: readonly ResolvedEndpoint[],
  config: ResolvedConfig,
  errors: DataplaneError[],
): ResolvedPeer[] {
  const byIp = new Map<string, ResolvedPeer>();
  const macOwner = new Map<string, string>();
  const localIps = new Set(endpoints.map((e) => e.address.slice(0, e.address.indexOf('/'))));
  const localMacs = new Set(endpoints.map((e) => e.mac));
  const goodVteps = new Set<string>();
  for (const p of net.peers) {
    const object = (): DataplaneObject => ({ kind: 'peer', network: net.id, peer: p.ip });
    // parseIpv4 accepts only the canonical dotted form, so a valid `p.ip` is already normalised.
    if (parseIpv4(p.ip) === undefined) {
      errors.push(new InvalidDesiredStateError(object(), 'ip', p.ip, 'is not an IPv4 address'));
      continue;
    }
    const mac = normalizeMac(p.mac);
    if (!mac) {
      errors.push(new InvalidDesiredStateError(object(), 'mac', p.mac, 'is not a unicast MAC address'));
      continue;
    }
    if (!goodVteps.has(p.vtep)) {
      if (parseIpv4(p.vtep) === undefined) {
        errors.push(new InvalidDesiredStateError(object(), 'vtep', p.vtep, 'is not an IPv4 address'));
        continue;
      }
      goodVteps.add(p.vtep);
    }
    const ip = p.ip;
    const peer = { ip, mac, vtep: p.vtep };
    const existing = byIp.get(ip);
    if (existing) {
      if (existing.mac !== mac || existing.vtep !== p.vtep) {
        errors.push(new DesiredConflictError(object(), `is listed twice (${existing.mac} at ${existing.vtep}, ${mac} at ${p.vtep}); the first is programmed`));
      }
      continue;
    }
    if (p.vtep === config.vtep) {
      errors.push(new DesiredConflictError(object(), `has this host's own VTEP ${p.vtep}; local endpoints are not peers`));
      continue;
    }
    if (localIps.has(ip) || localMacs.has(mac)) {
      errors.push(new DesiredConflictError(object(), `uses the address or MAC ${mac} of a local endpoint`));
      continue;
    }
    const macHolder = macOwner.get(mac);
    if (macHolder !== undefined) {
      errors.push(new DesiredConflictError(object(), `MAC ${mac} is already used by peer ${macHolder}`));
      continue;
    }
    macOwner.set(mac, ip);
    byIp.set(ip, peer);
  }
  return [...byIp.values()];
}
