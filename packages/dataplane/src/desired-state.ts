/**
 * Validation of a desired state and everything derived from it (names, MACs, MTUs, routes, config
 * digests). What the kernel would refuse is refused here, with an error naming the object, so a batch
 * never carries a line iproute2 cannot parse (a parse error aborts a whole `-batch`, even with `-force`).
 * A refused object is left in the kernel as it is; the planner does not touch it.
 */

import { createHash } from 'node:crypto';
import {
  canonicalIp,
  cidrContainsIp,
  cidrOf,
  cidrOverlaps,
  endpointMac,
  formatCidr,
  formatInterfaceAddress,
  ipToString,
  isHostAddress,
  normalizeMac,
  parseInterfaceAddress,
  parseIp,
  type Cidr,
  type Family,
  type InterfaceAddress,
  type IpAddress,
} from '@kvnet/netaddr';
import type { ResolvedConfig } from './config.ts';
import type { ActualState, DesiredEndpoint, DesiredNetwork, DesiredState, NetnsTarget } from './dataplane.ts';
import {
  DesiredConflictError,
  InvalidDesiredStateError,
  MtuExceedsUnderlayError,
  SandboxNotFoundError,
  type DataplaneError,
  type DataplaneObject,
} from './errors.ts';
import { checkNetworkMtu } from './mtu.ts';
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
/** Longest subnet prefix per family: room for network, gateway and one endpoint (and IPv4 broadcast). */
const MAX_SUBNET_PREFIX: Readonly<Record<Family, number>> = { 4: 30, 6: 126 };

export interface ResolvedPeer {
  /** Canonical addresses, IPv4 first: one neighbour entry each. */
  readonly ips: readonly string[];
  readonly mac: string;
  /** Canonical VTEP address. */
  readonly vtep: string;
  /** How errors name the peer: its first address. */
  readonly label: string;
}

export interface ResolvedEgress {
  readonly object: DataplaneObject;
  /** Host-side link name (a port of the gateway bridge). */
  readonly hostIfname: string;
  readonly ifname: string;
  readonly address: string;
  readonly gateway: string;
  /** IPv6 egress address (`ip/len`) and the bridge's IPv6 gateway, when asked for. */
  readonly address6?: string;
  readonly gateway6?: string;
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
      /** On-link routes for the network's other subnets of the endpoint's families. */
      readonly routes: readonly string[];
    }
  | { readonly kind: 'handoff'; readonly hostIfname: string };

export interface ResolvedEndpoint {
  readonly id: string;
  readonly object: DataplaneObject;
  /** Overlay-side veth name. */
  readonly vethName: string;
  readonly mac: string;
  /** Canonical `ip/len` addresses, IPv4 first (IPv6 ones are set without duplicate address detection). */
  readonly addresses: readonly string[];
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
  /** Gateway addresses of the bridge, canonical, e.g. 10.0.1.1/24, fd00:1::1/64. */
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
  /** Applied anyway, but worth telling: a network MTU above what the underlay carries. */
  readonly warnings: readonly DataplaneError[];
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
  readonly cidr: Cidr;
  readonly gateway: IpAddress;
}

/** Validates `desired` against the config and the parts of `actual` it depends on (gateway bridge, sandbox probes). */
export function resolveDesiredState(
  desired: DesiredState,
  config: ResolvedConfig,
  actual: Pick<ActualState, 'host' | 'sandboxes'>,
): ResolvedDesiredState {
  const errors: DataplaneError[] = [];
  const warnings: DataplaneError[] = [];
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
    const hasIpv6 = subnets.some((s) => s.cidr.family === 6);
    const mtuProblem = checkNetworkMtu(mtu, { hasIpv6 });
    if (mtuProblem) {
      refuse(new InvalidDesiredStateError(object, 'mtu', mtu, mtuProblem.reason));
      continue;
    }
    const fit = checkNetworkMtu(mtu, { hasIpv6, underlayMtu: config.underlayMtu, underlayFamily: config.vtepFamily });
    if (fit) warnings.push(new MtuExceedsUnderlayError({ ...object, netns: overlayNetnsName(config.prefix, net.id) }, mtu, fit.limit, fit.reason));
    vniOwner.set(net.vni, net.id);

    const netns = overlayNetnsName(config.prefix, net.id);
    const endpoints: ResolvedEndpoint[] = [];
    const keepEndpoints = new Set<string>();
    const used: Used = { ids: new Set(), veths: new Map(), ips: new Map(), macs: new Map() };
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
      bridgeAddresses: subnets.map((s) => `${ipToString(s.gateway)}/${s.cidr.prefix}`),
      endpoints,
      keepEndpoints,
      peers,
    });
  }
  return { networks, keepNetworks, keepEgress, errors, warnings };
}

interface GatewayView {
  readonly bridge: string;
  readonly cidr: Cidr;
  readonly gateway: string;
  readonly cidr6?: Cidr;
  readonly gateway6?: string;
}

/** Names an endpoint's resources (veth names, addresses, MACs) already taken in its network. */
interface Used {
  readonly ids: Set<string>;
  readonly veths: Map<string, string>;
  /** Canonical bare address → endpoint id. */
  readonly ips: Map<string, string>;
  readonly macs: Map<string, string>;
}

function gatewayOf(actual: Pick<ActualState, 'host'>, config: ResolvedConfig): GatewayView | string {
  if (!config.gateway) return 'the data plane has no gateway bridge (gatewayBridge: false)';
  const gw = actual.host.gatewayBridge;
  const cidr = gw?.subnet ? cidrOf(gw.subnet) : undefined;
  if (!gw || !cidr || !gw.gateway) return `the gateway bridge ${config.gateway.name} does not exist yet or has no IPv4 address`;
  const cidr6 = gw.subnet6 ? cidrOf(gw.subnet6) : undefined;
  return { bridge: gw.name, cidr, gateway: gw.gateway, ...(cidr6 && gw.gateway6 ? { cidr6, gateway6: gw.gateway6 } : {}) };
}

function resolveSubnets(net: DesiredNetwork, object: DataplaneObject): Subnet[] | InvalidDesiredStateError {
  if (net.subnets.length === 0) return new InvalidDesiredStateError(object, 'subnets', [], 'must hold at least one subnet');
  const out: Subnet[] = [];
  for (const s of net.subnets) {
    // host bits in the subnet are tolerated (10.0.1.5/24 is 10.0.1.0/24), as the agent has always sent
    const parsed = parseInterfaceAddress(s.cidr);
    if (!parsed || parsed.prefix > MAX_SUBNET_PREFIX[parsed.ip.family]) {
      return new InvalidDesiredStateError(object, 'subnet', s.cidr, `is not an IPv4 CIDR of /${MAX_SUBNET_PREFIX[4]} or larger or an IPv6 CIDR of /${MAX_SUBNET_PREFIX[6]} or larger`);
    }
    const cidr = parsed.network;
    const gateway = parseIp(s.gateway);
    if (gateway === undefined || !isHostAddress(cidr, gateway)) {
      return new InvalidDesiredStateError(object, 'gateway', s.gateway, `is not a host address of subnet ${s.cidr}`);
    }
    const overlapping = out.find((o) => cidrOverlaps(o.cidr, cidr));
    if (overlapping) {
      return new InvalidDesiredStateError(object, 'subnet', s.cidr, `overlaps subnet ${formatCidr(overlapping.cidr)} of the same network`);
    }
    out.push({ cidr, gateway });
  }
  return out;
}

type EndpointResult = ResolvedEndpoint | { error: DataplaneError; keep: boolean };

/** One endpoint address of the wanted family inside one of the network's subnets, or why not. */
function endpointAddress(
  value: string,
  family: Family,
  net: DesiredNetwork,
  subnets: readonly Subnet[],
): InterfaceAddress | string {
  const a = parseInterfaceAddress(value);
  if (!a || a.ip.family !== family) {
    return family === 4
      ? 'is not an IPv4 address with a prefix length (e.g. 10.0.1.2/24; an IPv6 address goes in addressIPv6)'
      : 'is not an IPv6 address with a prefix length (e.g. fd00:1::2/64)';
  }
  const subnet = subnets.find((s) => s.cidr.family === family && s.cidr.prefix === a.prefix && cidrContainsIp(s.cidr, a.ip));
  if (!subnet) return `is in none of the network's subnets ${net.subnets.map((s) => s.cidr).join(', ')}`;
  if (a.ip.value === subnet.gateway.value || !isHostAddress(subnet.cidr, a.ip)) {
    return family === 4 ? 'is the gateway, network or broadcast address of its subnet' : 'is the gateway or the network (Subnet-Router anycast) address of its subnet';
  }
  return a;
}

function resolveEndpoint(
  ep: DesiredEndpoint,
  object: DataplaneObject,
  net: DesiredNetwork,
  subnets: readonly Subnet[],
  mtu: number,
  used: Used,
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
  if (ep.address === undefined && ep.addressIPv6 === undefined) {
    return invalid('address', undefined, 'is missing: an endpoint needs an IPv4 address (address), an IPv6 address (addressIPv6) or both');
  }
  const parsed: InterfaceAddress[] = [];
  for (const [field, value, family] of [['address', ep.address, 4], ['addressIPv6', ep.addressIPv6, 6]] as const) {
    if (value === undefined) continue;
    const a = endpointAddress(value, family, net, subnets);
    if (typeof a === 'string') return invalid(field, value, a);
    parsed.push(a);
  }
  const v4 = parsed.find((a) => a.ip.family === 4);
  const v6 = parsed.find((a) => a.ip.family === 6);
  const mac = ep.mac === undefined ? endpointMac({ ...(v4 ? { ipv4: v4.ip } : {}), ...(v6 ? { ipv6: v6.ip } : {}) }) : normalizeMac(ep.mac);
  if (!mac) return invalid('mac', ep.mac, 'is not a unicast MAC address (aa:bb:cc:dd:ee:ff)');
  if ((ep.sandbox === undefined) === (ep.handoff === undefined)) {
    return invalid('sandbox/handoff', { sandbox: ep.sandbox, handoff: ep.handoff }, 'exactly one of sandbox and handoff must be given');
  }
  const vethName = overlayVethName(ep.id);
  const ips = parsed.map((a) => ipToString(a.ip));
  const takenIp = ips.find((ip) => used.ips.has(ip));
  const taken =
    (used.veths.has(vethName) && `overlay interface name ${vethName} is already taken by endpoint ${used.veths.get(vethName)}`) ||
    (takenIp !== undefined && `address ${takenIp} is already taken by endpoint ${used.ips.get(takenIp)}`) ||
    (used.macs.has(mac) && `MAC ${mac} is already taken by endpoint ${used.macs.get(mac)}`);
  if (taken) return { error: new DesiredConflictError(object, taken), keep: true };
  let side: ResolvedEndpointSide;
  if (ep.sandbox) {
    const pathProblem = netnsPathProblem(ep.sandbox.path);
    if (pathProblem) return invalid('sandbox.path', ep.sandbox.path, pathProblem);
    const nameProblem = ifnameProblem(ep.sandbox.ifname);
    if (nameProblem) return invalid('sandbox.ifname', ep.sandbox.ifname, nameProblem);
    const families = new Set(parsed.map((a) => a.ip.family));
    const routes = subnets
      .filter((s) => families.has(s.cidr.family) && !parsed.some((a) => cidrContainsIp(s.cidr, a.ip)))
      .map((s) => formatCidr(s.cidr));
    side = { kind: 'sandbox', path: ep.sandbox.path, netns: sandboxTarget(ep.sandbox.path), ifname: ep.sandbox.ifname, routes };
  } else {
    const hostIfname = ep.handoff!.hostIfname;
    const nameProblem = ifnameProblem(hostIfname);
    if (nameProblem) return invalid('handoff.hostIfname', hostIfname, nameProblem);
    side = { kind: 'handoff', hostIfname };
  }
  used.veths.set(vethName, ep.id);
  for (const ip of ips) used.ips.set(ip, ep.id);
  used.macs.set(mac, ep.id);
  const addresses = parsed.map(formatInterfaceAddress);
  // One address is digested as a plain string, as before IPv6 existed: an upgraded agent finds its
  // IPv4 endpoints complete instead of recreating them.
  const configDigest = digest([addresses.length === 1 ? addresses[0] : addresses, mac, mtu, side.kind === 'sandbox' ? [side.path, side.ifname, side.routes] : side.hostIfname]);
  return { id: ep.id, object, vethName, mac, addresses, mtu, side, marker: endpointMarker(ep.id, configDigest) };
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
  const address = egressAddress(egress.address, gateway.cidr, gateway.gateway);
  if (address === undefined) {
    return new InvalidDesiredStateError(egObject, 'sandbox.egress.address', egress.address, `is not a host address in the gateway bridge subnet ${formatCidr(gateway.cidr)} (gateway ${gateway.gateway})`);
  }
  let address6: string | undefined;
  if (egress.addressIPv6 !== undefined) {
    if (!gateway.cidr6 || !gateway.gateway6) {
      return new InvalidDesiredStateError(egObject, 'sandbox.egress.addressIPv6', egress.addressIPv6, `cannot be attached: the gateway bridge ${gateway.bridge} has no IPv6 subnet (the host has no IPv6 address, or gatewayBridge.ipv6 is false)`);
    }
    address6 = egressAddress(egress.addressIPv6, gateway.cidr6, gateway.gateway6);
    if (address6 === undefined) {
      return new InvalidDesiredStateError(egObject, 'sandbox.egress.addressIPv6', egress.addressIPv6, `is not a host address in the gateway bridge's IPv6 subnet ${formatCidr(gateway.cidr6)} (gateway ${gateway.gateway6})`);
    }
  }
  const hostIfname = egressHostIfname(config.prefix, ep.id);
  const holder = hostNames.get(hostIfname);
  if (holder) return new DesiredConflictError({ ...egObject, ifname: hostIfname }, `host interface name ${hostIfname} is already used by ${holder}`);
  hostNames.set(hostIfname, `egress of endpoint ${ep.id}`);
  const egMtu = config.underlayMtu;
  const v6 = address6 !== undefined ? [address6, gateway.gateway6] : [];
  const configDigest = digest([ep.sandbox!.path, egress.ifname, address, gateway.gateway, gateway.bridge, egMtu, ...v6]);
  return {
    object: egObject,
    hostIfname,
    ifname: egress.ifname,
    address,
    gateway: gateway.gateway,
    ...(address6 !== undefined ? { address6, gateway6: gateway.gateway6! } : {}),
    bridge: gateway.bridge,
    mtu: egMtu,
    marker: egressMarker(config.prefix, ep.id, configDigest),
  };
}

/** `text` as a canonical `ip/len` host address of `subnet` other than `gateway`, or undefined. */
function egressAddress(text: string, subnet: Cidr, gateway: string): string | undefined {
  const a = parseInterfaceAddress(text);
  if (!a || a.prefix !== subnet.prefix || !isHostAddress(subnet, a.ip) || ipToString(a.ip) === canonicalIp(gateway)) return undefined;
  return formatInterfaceAddress(a);
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
  const peers: ResolvedPeer[] = [];
  const macOwner = new Map<string, string>();
  const localIps = new Set(endpoints.flatMap((e) => e.addresses.map((a) => a.slice(0, a.indexOf('/')))));
  const localMacs = new Set(endpoints.map((e) => e.mac));
  const vteps = new Map<string, string | undefined>();
  for (const p of net.peers) {
    const label = p.ip ?? p.ipv6 ?? '(no address)';
    const object = (): DataplaneObject => ({ kind: 'peer', network: net.id, peer: label });
    // canonicalIp, not parse + format: this loop runs for every peer on every apply (10 000 peers)
    const ip4 = p.ip === undefined ? undefined : canonicalIp(p.ip);
    const ip6 = p.ipv6 === undefined ? undefined : canonicalIp(p.ipv6);
    const ips: string[] = [];
    let bad: DataplaneError | undefined;
    if (p.ip !== undefined) {
      if (ip4 === undefined || ip4.includes(':')) bad = new InvalidDesiredStateError(object(), 'ip', p.ip, 'is not an IPv4 address');
      else ips.push(ip4);
    }
    if (!bad && p.ipv6 !== undefined) {
      if (ip6 === undefined || !ip6.includes(':')) bad = new InvalidDesiredStateError(object(), 'ipv6', p.ipv6, 'is not an IPv6 address');
      else ips.push(ip6);
    }
    if (!bad && ips.length === 0) bad = new InvalidDesiredStateError(object(), 'ip', undefined, 'is missing: a peer needs an IPv4 address (ip), an IPv6 address (ipv6) or both');
    if (bad) {
      errors.push(bad);
      continue;
    }
    const mac = normalizeMac(p.mac);
    if (!mac) {
      errors.push(new InvalidDesiredStateError(object(), 'mac', p.mac, 'is not a unicast MAC address'));
      continue;
    }
    let vtep = vteps.get(p.vtep);
    if (!vteps.has(p.vtep)) {
      const v = parseIp(p.vtep);
      vtep = v && v.family === config.vtepFamily ? ipToString(v) : undefined;
      vteps.set(p.vtep, vtep);
    }
    if (vtep === undefined) {
      errors.push(new InvalidDesiredStateError(object(), 'vtep', p.vtep, `is not an IPv${config.vtepFamily} address (this host's VTEP ${config.vtep} is IPv${config.vtepFamily}; one VXLAN device sends over one family)`));
      continue;
    }
    const peer: ResolvedPeer = { ips, mac, vtep, label: ips[0]! };
    const existing = byIp.get(ips[0]!) ?? (ips.length > 1 ? byIp.get(ips[1]!) : undefined);
    if (existing) {
      if (existing.mac !== mac || existing.vtep !== vtep) {
        errors.push(new DesiredConflictError(object(), `is listed twice (${existing.mac} at ${existing.vtep}, ${mac} at ${vtep}); the first is programmed`));
      }
      continue;
    }
    if (vtep === config.vtep) {
      errors.push(new DesiredConflictError(object(), `has this host's own VTEP ${vtep}; local endpoints are not peers`));
      continue;
    }
    if (ips.some((ip) => localIps.has(ip)) || localMacs.has(mac)) {
      errors.push(new DesiredConflictError(object(), `uses the address or MAC ${mac} of a local endpoint`));
      continue;
    }
    const macHolder = macOwner.get(mac);
    if (macHolder !== undefined) {
      errors.push(new DesiredConflictError(object(), `MAC ${mac} is already used by peer ${macHolder}`));
      continue;
    }
    macOwner.set(mac, label);
    for (const ip of ips) byIp.set(ip, peer);
    peers.push(peer);
  }
  return peers;
}
