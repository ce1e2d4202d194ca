/**
 * The planner: desired state + actual state → the exact iproute2 lines, grouped into one batch per
 * (stage, tool, namespace). Pure: no I/O, deterministic for a given input.
 *
 * Stages run in this order; the batches of one stage run concurrently:
 *
 * 1. `delete`     links that must go or be recreated (explicit `link del` is synchronous; a deleted
 *                 namespace releases its devices — and their VXLAN port/VNI — only later, asynchronously)
 * 2. `namespaces` `netns del` / `netns add`
 * 3. `create`     in the host namespace: vxlan0 directly into the overlay namespace (its UDP socket stays
 *                 in the host namespace, where the VTEP address is), endpoint veth pairs (one end into
 *                 the overlay namespace, the other into the sandbox or left in the host for Docker),
 *                 egress veth pairs (host end on the gateway bridge)
 * 4. `configure`  per overlay namespace: br0, addresses, attach vxlan0 and veths, neighbour entries (ip)
 *                 and FDB entries (bridge); in the host: isolate egress ports
 * 5. `sandbox`    per container namespace: interface up, address, routes
 * 6. `mark`       the alias marker on each finished endpoint/egress link — written last, so a half-made
 *                 endpoint (crash, failed line) is recognised on the next run and recreated
 */

import type { ResolvedConfig } from './config.ts';
import { netnsLabel } from './config.ts';
import type {
  ActualLink,
  ActualNetwork,
  ActualState,
  DesiredState,
  NetnsTarget,
  Plan,
  PlanBatch,
  PlanOp,
  PlanStage,
  PlanStageName,
} from './dataplane.ts';
import type { DataplaneObject } from './errors.ts';
import { resolveDesiredState, type ResolvedDesiredState, type ResolvedEndpoint, type ResolvedNetwork } from './desired-state.ts';
import { planPeers, vxlanKey } from './fdb-plan.ts';
import { BRIDGE_IFNAME, egressHostIfname, overlayVethName, parseMarker, VXLAN_IFNAME } from './names.ts';

const STAGE_ORDER: readonly PlanStageName[] = ['delete', 'namespaces', 'create', 'configure', 'sandbox', 'mark'];
const SELF: NetnsTarget = { kind: 'self' };

/** Collects ops into batches keyed by stage, tool and namespace, keeping insertion order. */
class PlanBuilder {
  private readonly stages = new Map<PlanStageName, Map<string, { tool: 'ip' | 'bridge'; netns: NetnsTarget; ops: PlanOp[] }>>();

  add(stage: PlanStageName, tool: 'ip' | 'bridge', netns: NetnsTarget, op: PlanOp): void {
    let batches = this.stages.get(stage);
    if (!batches) this.stages.set(stage, (batches = new Map()));
    const key = `${tool}|${netnsLabel(netns)}`;
    let batch = batches.get(key);
    if (!batch) batches.set(key, (batch = { tool, netns, ops: [] }));
    batch.ops.push(op);
  }

  addAll(stage: PlanStageName, tool: 'ip' | 'bridge', netns: NetnsTarget, ops: readonly PlanOp[]): void {
    for (const op of ops) this.add(stage, tool, netns, op);
  }

  build(errors: Plan['errors'], warnings: Plan['warnings']): Plan {
    const stages: PlanStage[] = [];
    let changes = 0;
    for (const name of STAGE_ORDER) {
      const batches: PlanBatch[] = [...(this.stages.get(name)?.values() ?? [])];
      if (batches.length === 0) continue;
      for (const b of batches) changes += b.ops.length;
      stages.push({ name, batches });
    }
    return { stages, errors, warnings, changes };
  }
}

function op(line: string, object: DataplaneObject, action: string, key: string, requires: readonly string[] = []): PlanOp {
  return { line, object, action, key, requires };
}

/**
 * ` nodad` after an IPv6 address: every address is unique by construction (IPAM), and duplicate address
 * detection would leave it "tentative" — unusable as a source — for about a second after it is set.
 */
function nodad(address: string): string {
  return address.includes(':') ? ' nodad' : '';
}

const nsKey = (networkId: string): string => `ns:${networkId}`;
const bridgeKey = (networkId: string): string => `bridge:${networkId}`;
const endpointKey = (networkId: string, endpointId: string): string => `ep:${networkId}:${endpointId}`;
const egressKey = (endpointId: string): string => `eg:${endpointId}`;

/** The exact changes that turn `actual` into `desired`; see the module comment for the stages. */
export function planChanges(desired: DesiredState, actual: ActualState, config: ResolvedConfig): Plan {
  return planResolved(resolveDesiredState(desired, config, actual), actual, config);
}

/** {@link planChanges} for a desired state already resolved against `actual`. */
export function planResolved(resolved: ResolvedDesiredState, actual: ActualState, config: ResolvedConfig): Plan {
  const plan = new PlanBuilder();
  const actualById = new Map(actual.networks.map((n) => [n.id, n]));
  const desiredIds = new Set(resolved.networks.map((n) => n.id));
  for (const a of actual.networks) {
    if (!desiredIds.has(a.id) && !resolved.keepNetworks.has(a.id)) planNetworkRemoval(plan, a);
  }
  for (const net of resolved.networks) planNetwork(plan, net, actualById.get(net.id), config);
  planEgress(plan, resolved, actual, config);
  return plan.build(resolved.errors, resolved.warnings);
}

function planNetworkRemoval(plan: PlanBuilder, a: ActualNetwork): void {
  const object: DataplaneObject = { kind: 'network', network: a.id, netns: a.netns };
  const key = `rm:${a.id}`;
  const ov: NetnsTarget = { kind: 'name', name: a.netns };
  // Explicit deletes first: the veth peers in containers and the VXLAN socket go away now, not whenever
  // the kernel gets round to cleaning up the namespace.
  for (const link of a.links) {
    if (link.kind === 'veth' || link.name === VXLAN_IFNAME) {
      plan.add('delete', 'ip', ov, op(`link del dev ${link.name}`, { ...object, ifname: link.name }, `remove ${link.name}`, key));
    }
  }
  plan.add('namespaces', 'ip', SELF, op(`netns del ${a.netns}`, object, `remove overlay namespace ${a.netns}`, key));
}

function planNetwork(plan: PlanBuilder, net: ResolvedNetwork, a: ActualNetwork | undefined, config: ResolvedConfig): void {
  const ov: NetnsTarget = { kind: 'name', name: net.netns };
  const object = net.object;
  const nk = nsKey(net.id);
  const bk = bridgeKey(net.id);
  const vk = vxlanKey(net.id);
  let links: readonly ActualLink[] = a?.links ?? [];
  let neighbours = a?.neighbours ?? [];
  let fdb = a?.fdb ?? [];

  if (!a || a.readError) {
    if (a?.readError) plan.add('namespaces', 'ip', SELF, op(`netns del ${net.netns}`, object, `remove unreadable namespace ${net.netns} (${a.readError})`, nk));
    plan.add('namespaces', 'ip', SELF, op(`netns add ${net.netns}`, object, `create overlay namespace ${net.netns}`, nk));
    links = [];
    neighbours = [];
    fdb = [];
  }
  const link = (name: string): ActualLink | undefined => links.find((l) => l.name === name);

  // br0: one bridge carrying every subnet's gateway (all subnets share the network's one VNI).
  const brObject = { ...object, ifname: BRIDGE_IFNAME };
  let br = link(BRIDGE_IFNAME);
  if (br && br.kind !== 'bridge') {
    plan.add('delete', 'ip', ov, op(`link del dev ${BRIDGE_IFNAME}`, brObject, `remove ${BRIDGE_IFNAME} (a ${br.kind ?? 'device'}, not a bridge)`, bk));
    br = undefined;
  }
  if (!br) {
    plan.add('configure', 'ip', ov, op(`link add name ${BRIDGE_IFNAME} mtu ${net.mtu} type bridge`, brObject, `create bridge ${BRIDGE_IFNAME}`, bk, [nk]));
  }
  const haveAddresses = br?.addresses ?? [];
  for (const addr of haveAddresses) {
    if (!net.bridgeAddresses.includes(addr)) {
      plan.add('configure', 'ip', ov, op(`addr del ${addr} dev ${BRIDGE_IFNAME}`, brObject, `remove address ${addr} from ${BRIDGE_IFNAME}`, bk, [bk]));
    }
  }
  for (const addr of net.bridgeAddresses) {
    if (!haveAddresses.includes(addr)) {
      plan.add('configure', 'ip', ov, op(`addr add ${addr} dev ${BRIDGE_IFNAME}${nodad(addr)}`, brObject, `add gateway address ${addr} to ${BRIDGE_IFNAME}`, bk, [bk]));
    }
  }
  if (!br || br.mtu !== net.mtu || !br.up) {
    plan.add('configure', 'ip', ov, op(`link set dev ${BRIDGE_IFNAME} mtu ${net.mtu} up`, brObject, `bring ${BRIDGE_IFNAME} up with MTU ${net.mtu}`, bk, [bk]));
  }

  // vxlan0: recreated when any identity attribute differs (its FDB and neighbours go with it).
  const vxObject = { ...object, ifname: VXLAN_IFNAME };
  const vxDescription = `${VXLAN_IFNAME} (VNI ${net.vni}, UDP port ${config.vxlanPort}, local ${config.vtep})`;
  let vx = link(VXLAN_IFNAME);
  const vxOk =
    vx?.kind === 'vxlan' &&
    vx.vxlan !== undefined &&
    vx.vxlan.vni === net.vni &&
    vx.vxlan.port === config.vxlanPort &&
    vx.vxlan.local === config.vtep &&
    !vx.vxlan.learning &&
    vx.vxlan.proxy;
  if (vx && !vxOk) {
    plan.add('delete', 'ip', ov, op(`link del dev ${VXLAN_IFNAME}`, vxObject, `remove ${VXLAN_IFNAME} with outdated settings`, vk));
    vx = undefined;
    neighbours = [];
    fdb = [];
  }
  if (!vx) {
    plan.add(
      'create',
      'ip',
      config.host,
      op(
        `link add name ${VXLAN_IFNAME} mtu ${net.mtu} netns ${net.netns} type vxlan id ${net.vni} local ${config.vtep} dstport ${config.vxlanPort} nolearning proxy`,
        vxObject,
        `create ${vxDescription}`,
        vk,
        [nk],
      ),
    );
  }
  if (!vx || vx.mtu !== net.mtu || vx.master !== BRIDGE_IFNAME || !vx.up) {
    plan.add(
      'configure',
      'ip',
      ov,
      op(`link set dev ${VXLAN_IFNAME} mtu ${net.mtu} master ${BRIDGE_IFNAME} up`, vxObject, `attach ${vxDescription} to ${BRIDGE_IFNAME} and bring it up`, vk, [vk, bk]),
    );
  }

  planEndpoints(plan, net, links, ov, config);

  const peers = planPeers(net.id, net.peers, neighbours, fdb);
  plan.addAll('configure', 'ip', ov, peers.neighbour);
  plan.addAll('configure', 'bridge', ov, peers.fdb);
}

function planEndpoints(plan: PlanBuilder, net: ResolvedNetwork, links: readonly ActualLink[], ov: NetnsTarget, config: ResolvedConfig): void {
  const wanted = new Map(net.endpoints.map((e) => [e.id, e]));
  const keptNames = new Set([...net.keepEndpoints].map(overlayVethName));
  const complete = new Map<string, ActualLink>();
  for (const l of links) {
    if (l.kind !== 'veth') continue;
    const marker = parseMarker(l.alias);
    const ep = marker?.type === 'ep' ? wanted.get(marker.endpointId) : undefined;
    if (ep && l.alias === ep.marker && l.name === ep.vethName) {
      complete.set(ep.id, l);
      continue;
    }
    const owner = marker?.type === 'ep' ? marker.endpointId : undefined;
    if (owner !== undefined ? net.keepEndpoints.has(owner) : keptNames.has(l.name)) continue;
    const object: DataplaneObject = { kind: 'endpoint', network: net.id, endpoint: owner ?? l.name, ifname: l.name, netns: net.netns };
    const why = ep ? 'outdated' : marker ? 'no longer wanted' : 'unfinished';
    plan.add('delete', 'ip', ov, op(`link del dev ${l.name}`, object, `remove ${why} endpoint interface ${l.name}`, endpointKey(net.id, owner ?? l.name)));
  }

  for (const ep of net.endpoints) {
    const key = endpointKey(net.id, ep.id);
    const requires = [key, bridgeKey(net.id)];
    const object = { ...ep.object, ifname: ep.vethName, netns: net.netns };
    const have = complete.get(ep.id);
    if (have) {
      if (have.master !== BRIDGE_IFNAME || !have.up || have.mtu !== ep.mtu) {
        plan.add('configure', 'ip', ov, op(`link set dev ${ep.vethName} mtu ${ep.mtu} master ${BRIDGE_IFNAME} up`, object, `attach ${ep.vethName} to ${BRIDGE_IFNAME}`, key, requires));
      }
      continue;
    }
    plan.add('create', 'ip', config.host, createEndpointOp(net, ep, key));
    plan.add('configure', 'ip', ov, op(`link set dev ${ep.vethName} master ${BRIDGE_IFNAME} up`, object, `attach ${ep.vethName} to ${BRIDGE_IFNAME}`, key, requires));
    if (ep.side.kind === 'sandbox') {
      const side = ep.side;
      const inSandbox = { ...ep.object, ifname: side.ifname, netns: side.path };
      plan.add('sandbox', 'ip', side.netns, op(`link set dev ${side.ifname} up`, inSandbox, `bring ${side.ifname} up`, key, [key]));
      for (const address of ep.addresses) {
        plan.add('sandbox', 'ip', side.netns, op(`addr replace ${address} dev ${side.ifname}${nodad(address)}`, inSandbox, `set address ${address} on ${side.ifname}`, key, [key]));
      }
      for (const route of side.routes) {
        plan.add('sandbox', 'ip', side.netns, op(`route replace ${route} dev ${side.ifname}`, inSandbox, `add on-link route ${route} via ${side.ifname}`, key, [key]));
      }
    }
    plan.add('mark', 'ip', ov, op(`link set dev ${ep.vethName} alias ${ep.marker}`, object, `mark ${ep.vethName} as complete`, key, requires));
  }
}

function createEndpointOp(net: ResolvedNetwork, ep: ResolvedEndpoint, key: string): PlanOp {
  const ovSide = `link add name ${ep.vethName} mtu ${ep.mtu} netns ${net.netns} type veth`;
  if (ep.side.kind === 'sandbox') {
    return op(
      `${ovSide} peer name ${ep.side.ifname} mtu ${ep.mtu} address ${ep.mac} netns ${ep.side.path}`,
      { ...ep.object, ifname: ep.side.ifname, netns: ep.side.path },
      `create veth pair ${ep.vethName} (overlay) / ${ep.side.ifname} (sandbox ${ep.side.path})`,
      key,
      [nsKey(net.id)],
    );
  }
  return op(
    `${ovSide} peer name ${ep.side.hostIfname} mtu ${ep.mtu} address ${ep.mac}`,
    { ...ep.object, ifname: ep.side.hostIfname },
    `create veth pair ${ep.vethName} (overlay) / ${ep.side.hostIfname} (host, for Docker)`,
    key,
    [nsKey(net.id)],
  );
}

function planEgress(plan: PlanBuilder, resolved: ResolvedDesiredState, actual: ActualState, config: ResolvedConfig): void {
  const wanted = new Map<string, ResolvedEndpoint>();
  for (const net of resolved.networks) for (const ep of net.endpoints) if (ep.egress) wanted.set(ep.egress.hostIfname, ep);
  const keptNames = new Set([...resolved.keepEgress].map((id) => egressHostIfname(config.prefix, id)));
  const complete = new Set<string>();
  const host = config.host;

  for (const l of actual.host.links) {
    const ep = wanted.get(l.name);
    if (ep?.egress && l.alias === ep.egress.marker && l.kind === 'veth') {
      complete.add(l.name);
      if (l.master !== ep.egress.bridge || !l.up) {
        plan.add('configure', 'ip', host, op(`link set dev ${l.name} master ${ep.egress.bridge} up`, ep.egress.object, `attach ${l.name} to ${ep.egress.bridge}`, egressKey(ep.id)));
      }
      if (!l.isolated) {
        plan.add('configure', 'ip', host, op(`link set dev ${l.name} type bridge_slave isolated on`, ep.egress.object, `isolate gateway bridge port ${l.name}`, egressKey(ep.id)));
      }
      continue;
    }
    const marker = parseMarker(l.alias);
    const owner = marker?.type === 'eg' && marker.prefix === config.prefix ? marker.endpointId : undefined;
    if (owner !== undefined ? resolved.keepEgress.has(owner) : keptNames.has(l.name)) continue;
    const object: DataplaneObject = { kind: 'endpoint', endpoint: owner ?? l.name, ifname: l.name, netns: config.hostLabel };
    plan.add('delete', 'ip', host, op(`link del dev ${l.name}`, object, `remove ${ep ? 'outdated' : 'unwanted'} egress interface ${l.name}`, egressKey(owner ?? l.name)));
  }

  for (const ep of wanted.values()) {
    const eg = ep.egress!;
    if (complete.has(eg.hostIfname) || ep.side.kind !== 'sandbox') continue;
    const key = egressKey(ep.id);
    const side = ep.side;
    plan.add(
      'create',
      'ip',
      host,
      op(
        `link add name ${eg.hostIfname} mtu ${eg.mtu} master ${eg.bridge} up type veth peer name ${eg.ifname} mtu ${eg.mtu} netns ${side.path}`,
        eg.object,
        `create egress veth pair ${eg.hostIfname} (on ${eg.bridge}) / ${eg.ifname} (sandbox ${side.path})`,
        key,
      ),
    );
    plan.add('configure', 'ip', host, op(`link set dev ${eg.hostIfname} type bridge_slave isolated on`, eg.object, `isolate gateway bridge port ${eg.hostIfname}`, key, [key]));
    plan.add('sandbox', 'ip', side.netns, op(`link set dev ${eg.ifname} up`, eg.object, `bring ${eg.ifname} up`, key, [key]));
    plan.add('sandbox', 'ip', side.netns, op(`addr replace ${eg.address} dev ${eg.ifname}`, eg.object, `set address ${eg.address} on ${eg.ifname}`, key, [key]));
    plan.add('sandbox', 'ip', side.netns, op(`route replace default via ${eg.gateway} dev ${eg.ifname}`, eg.object, `set default route via ${eg.gateway} dev ${eg.ifname}`, key, [key]));
    if (eg.address6 !== undefined && eg.gateway6 !== undefined) {
      plan.add('sandbox', 'ip', side.netns, op(`addr replace ${eg.address6} dev ${eg.ifname} nodad`, eg.object, `set address ${eg.address6} on ${eg.ifname}`, key, [key]));
      plan.add('sandbox', 'ip', side.netns, op(`route replace default via ${eg.gateway6} dev ${eg.ifname}`, eg.object, `set IPv6 default route via ${eg.gateway6} dev ${eg.ifname}`, key, [key]));
    }
    plan.add('mark', 'ip', host, op(`link set dev ${eg.hostIfname} alias ${eg.marker}`, eg.object, `mark ${eg.hostIfname} as complete`, key, [key]));
  }
}
