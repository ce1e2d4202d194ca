/**
 * What the local API does: create, list, inspect and remove networks; connect and disconnect
 * endpoints. Writes go to the store (fresh reads, conditional transactions); reads are served from
 * this agent's mirrors — `network ls` shows what this host knows — and every write waits until the
 * agent's own view has caught up with it, so a client reads its own writes from the same host.
 *
 * Uniqueness comes from create-only name keys written in the same transaction as the record
 * (`netnames/<name>`, `epnames/<nid>/<name>`). `network rm` first marks the network `deleting` with
 * compare-and-swap, which fails every concurrent connect's transaction (it checks the network's
 * revision), then looks for endpoints, so no endpoint can slip in between the check and the delete.
 *
 * A network has one pool per family (IPv4, IPv6, or both: network-pools.ts plans them from the
 * request) and one MTU (network-mtu.ts); an endpoint gets an address from each pool, allocated before
 * its record is written and released (both) when the record goes.
 */

import { statfsSync, statSync } from 'node:fs';
import type { AddressAllocation, Ipam, PoolInfo } from '@kvnet/ipam';
import { cidrContainsIp, parseInterfaceAddress, parseIp } from '@kvnet/netaddr';
import { NSFS_MAGIC, type DataplaneError } from '@kvnet/dataplane';
import { sleep, type KVEntry } from '@kvnet/store';
import type { ConnectInput, CreateNetworkInput } from './api/schemas.ts';
import { allEndpoints } from './cluster-view.ts';
import type { CoreContext } from './context.ts';
import { InvalidInputError, NameConflictError, NetworkInUseError, NotFoundError, PlumbingError } from './errors.ts';
import { decodeRecord, decodeText, encodeRecord, ID_PATTERN, keys, networkPool, newId, type CniAttachmentRef, type EndpointRecord, type NetworkPool, type NetworkRecord } from './layout.ts';
import { chooseNetworkMtu, networkMtuWarning, type DatapathSettings } from './network-mtu.ts';
import { planNetworkPools, type PoolShape } from './network-pools.ts';
import { DEFAULT_IFNAME, EGRESS_IFNAME } from './desired-state.ts';
import { listEndpointRecords, newEndpointRecord } from './records.ts';
import { defaultIfname } from './egress.ts';

/** Connect retries when the network record changed under it (e.g. an aborted `rm`). */
export const CONNECT_MAX_ATTEMPTS = 3;
/** Docker's option naming a VXLAN id for the network. */
export const VXLANID_OPTION = 'com.docker.network.driver.overlay.vxlanid_list';

/**
 * The API's network shape: the record without kvnet's bookkeeping, with its endpoints. `mtu` is the
 * network's (for a record written before networks carried one: what this host uses); `warnings` say
 * what does not work fully on this host (an MTU its underlay cannot carry).
 */
export type NetworkView = Pick<
  NetworkRecord,
  'id' | 'name' | 'vni' | 'subnet' | 'gateway' | 'ipRange' | 'auxAddresses' | 'internal' | 'labels' | 'options' | 'createdAt' | 'mtu' | 'subnet6' | 'gateway6' | 'ipRange6' | 'auxAddresses6'
> & {
  endpoints: EndpointView[];
  warnings?: string[];
};

/** The API's endpoint shape. */
export type EndpointView = Pick<EndpointRecord, 'id' | 'name' | 'aliases' | 'network' | 'node' | 'address' | 'ip' | 'address6' | 'ip6' | 'mac' | 'netns' | 'ifname' | 'cni'>;

/**
 * Work a face needs done before a new local endpoint is handed back (`connect` returns, Docker's
 * CreateEndpoint is answered), after the data plane applied it: e.g. the names face opening its
 * listener in the network's overlay namespace and adding the sandbox's route to the resolver. A hook
 * must not throw; {@link PLUMB_HOOK_BUDGET_MS} bounds how long it may delay the caller.
 */
export type PlumbHook = (record: EndpointRecord) => Promise<void>;
/** How long plumb hooks may delay a connect before it returns anyway (their work then finishes in the background). */
export const PLUMB_HOOK_BUDGET_MS = 3_000;

/** A network record to write for a pool already reserved: what {@link NetworkService.createNetworkForPool} takes. */
export interface NetworkSpec {
  /** The network id (the owner of `pool`). */
  readonly id: string;
  readonly name: string;
  /** The network's first pool: IPv4, or IPv6 for an IPv6-only network. */
  readonly pool: PoolInfo;
  /** The IPv6 pool of a dual-stack network (its owner may differ: Docker reserves it with its own RequestPool). */
  readonly pool6?: PoolInfo;
  /** Bare IP (default: the pool's gateway). */
  readonly gateway?: string;
  /** Bare IPv6 gateway of `pool6` (default: its gateway). */
  readonly gateway6?: string;
  /** MTU asked for (`--mtu`); default: the `com.docker.network.driver.mtu` option, else this host's default. */
  readonly mtu?: number;
  readonly internal: boolean;
  readonly labels: Record<string, string>;
  readonly options: Record<string, string>;
  /** A specific VXLAN id (default: the next free one). */
  readonly vni?: number;
  /** Release the pools too if the network cannot be written (true when the caller reserved them for this network only). */
  readonly ownsPool: boolean;
  /** More fields for the record (a face's own, e.g. Docker's bindings). */
  readonly extra?: Record<string, unknown>;
}

export function toEndpointView(e: EndpointRecord): EndpointView {
  return {
    id: e.id,
    name: e.name,
    ...(e.aliases?.length ? { aliases: e.aliases } : {}),
    network: e.network,
    node: e.node,
    address: e.address,
    ip: e.ip,
    ...(e.address6 !== undefined ? { address6: e.address6, ip6: e.ip6 ?? e.address6.slice(0, e.address6.indexOf('/')) } : {}),
    mac: e.mac,
    ...(e.netns !== undefined ? { netns: e.netns } : {}),
    ...(e.ifname !== undefined ? { ifname: e.ifname } : {}),
    ...(e.cni !== undefined ? { cni: e.cni } : {}),
  };
}

/**
 * The API's view of a network; with `datapath` (this host's), an old record without an MTU shows the
 * one this host uses, and a network this host's underlay cannot carry gets a warning.
 */
export function toNetworkView(n: NetworkRecord, endpoints: Iterable<EndpointRecord>, datapath?: DatapathSettings): NetworkView {
  const mtu = n.mtu ?? datapath?.underlay?.overlayMtu;
  const warning = networkMtuWarning(n, datapath?.underlay);
  return {
    id: n.id,
    name: n.name,
    vni: n.vni,
    subnet: n.subnet,
    gateway: n.gateway,
    ...(n.ipRange ? { ipRange: n.ipRange } : {}),
    auxAddresses: n.auxAddresses ?? {},
    ...(n.subnet6 ? { subnet6: n.subnet6, gateway6: n.gateway6 } : {}),
    ...(n.ipRange6 ? { ipRange6: n.ipRange6 } : {}),
    ...(n.subnet6 ? { auxAddresses6: n.auxAddresses6 ?? {} } : {}),
    ...(mtu !== undefined ? { mtu } : {}),
    internal: n.internal,
    labels: n.labels ?? {},
    options: n.options ?? {},
    createdAt: n.createdAt,
    ...(warning ? { warnings: [warning.message] } : {}),
    endpoints: [...endpoints].sort((a, b) => a.name.localeCompare(b.name)).map(toEndpointView),
  };
}

/** The fields of a network record that one pool fills: the first pool's, or (`6`) the IPv6 pool's. */
function poolFields(pool: PoolInfo, gateway: string | undefined, suffix: '' | '6'): Record<string, unknown> {
  return {
    [`poolId${suffix}`]: pool.id,
    [`subnet${suffix}`]: pool.subnet,
    [`gateway${suffix}`]: gateway ?? pool.gateway.split('/')[0]!,
    ...(pool.ipRange ? { [`ipRange${suffix}`]: pool.ipRange } : {}),
    [`auxAddresses${suffix}`]: pool.auxAddresses ?? {},
  };
}

/** Releases pools reserved for a network that was not written (each with its own owner). */
async function releasePools(ipam: Ipam, pools: readonly (PoolInfo | undefined)[], onError: (err: unknown) => void): Promise<void> {
  const seen = new Set<string>();
  for (const p of pools) {
    if (!p || seen.has(p.id)) continue;
    seen.add(p.id);
    await ipam.releasePool(p.id, p.owner).catch(onError);
  }
}

/** A specific address asked for in `field`, checked against the network's pool of its family. */
function checkRequestedAddress(net: NetworkRecord, field: 'ip' | 'ip6', value: string, pool: NetworkPool | undefined): string {
  const family = field === 'ip' ? 4 : 6;
  if (!pool) {
    const other = family === 4 ? 'ip6' : 'ip';
    throw new InvalidInputError(`invalid ${field} "${value}": network ${net.name} has no IPv${family} subnet (its subnet is ${net.subnet}); use ${other}`);
  }
  const subnet = parseInterfaceAddress(pool.subnet)!.network;
  const ip = parseIp(value);
  if (!ip || !cidrContainsIp(subnet, ip)) throw new InvalidInputError(`invalid ${field} "${value}": is outside subnet ${pool.subnet} of network ${net.name}`);
  return value;
}

/** Checks that `path` exists and is a network namespace; the message names the path. */
export function checkNetnsPath(path: string): void {
  try {
    statSync(path);
  } catch (err) {
    throw new InvalidInputError(`invalid netns "${path}": ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  let type: number;
  try {
    type = Number(statfsSync(path).type);
  } catch (err) {
    throw new InvalidInputError(`invalid netns "${path}": ${(err as Error).message}`);
  }
  if (type !== NSFS_MAGIC) throw new InvalidInputError(`invalid netns "${path}": is not a network namespace (expected a bind mount of /proc/<pid>/ns/net, e.g. /run/netns/NAME)`);
}

export class NetworkService {
  private readonly plumbHooks: PlumbHook[] = [];

  constructor(private readonly ctx: CoreContext) {}

  /** Adds a {@link PlumbHook}, run after every successful {@link plumb} (for a face; at start). */
  onPlumbed(hook: PlumbHook): void {
    this.plumbHooks.push(hook);
  }

  // ---- reads (from the agent's view) ----

  /** Every network with its endpoints (those of networks this host does not follow read from the store). */
  async listNetworks(): Promise<NetworkView[]> {
    const view = this.ctx.cluster.view();
    const nets = [...view.networks.values()].sort((a, b) => a.name.localeCompare(b.name));
    return Promise.all(nets.map(async (n) => toNetworkView(n, await this.endpointsOf(n.id), this.ctx.datapath)));
  }

  async inspectNetwork(ref: string): Promise<NetworkView> {
    const n = this.findNetwork(ref);
    return toNetworkView(n, await this.endpointsOf(n.id), this.ctx.datapath);
  }

  /**
   * Network `nid`'s endpoints: from the view, or — on a store watched per network, for a network this
   * host has no endpoint on and so does not follow (endpoint-mirrors.ts) — one listing of the store.
   */
  private async endpointsOf(nid: string): Promise<Iterable<EndpointRecord>> {
    if (this.ctx.cluster.isFollowed(nid)) return this.ctx.cluster.view().endpoints.get(nid)?.values() ?? [];
    return listEndpointRecords(this.ctx.store, nid, (key, err) => this.ctx.logger.warn({ key, err }, 'skipping unreadable store record'));
  }

  /** A network of the view by id, name or unique id prefix (NotFoundError names `ref`). */
  findNetwork(ref: string): NetworkRecord {
    return this.findInView(ref);
  }

  private findInView(ref: string): NetworkRecord {
    const view = this.ctx.cluster.view();
    const byId = view.networks.get(ref);
    if (byId) return byId;
    const byName = [...view.networks.values()].find((n) => n.name === ref);
    if (byName) return byName;
    if (/^[0-9a-f]{1,63}$/.test(ref)) {
      const matches = [...view.networks.values()].filter((n) => n.id.startsWith(ref));
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) throw new InvalidInputError(`network id prefix ${ref} is ambiguous (${matches.map((m) => m.name).join(', ')})`);
    }
    throw new NotFoundError(`no such network: ${ref}`);
  }

  // ---- writes (to the store) ----

  /** The network's current record and revision, read from the store. */
  async resolveNetwork(ref: string): Promise<{ record: NetworkRecord; entry: KVEntry }> {
    const { store } = this.ctx;
    let nid: string | undefined;
    if (ID_PATTERN.test(ref)) nid = ref;
    else {
      const byName = await store.get(keys.netname(ref)).catch((err) => {
        // a ref that is not a valid key segment is simply not a name
        if ((err as { code?: string }).code === 'KVNET_STORE_INVALID_KEY') return undefined;
        throw err;
      });
      if (byName) nid = decodeText(byName.value);
      else if (/^[0-9a-f]{1,63}$/.test(ref)) {
        const matches = [...this.ctx.cluster.view().networks.keys()].filter((id) => id.startsWith(ref));
        if (matches.length === 1) nid = matches[0];
      }
    }
    const entry = nid ? await store.get(keys.network(nid)) : undefined;
    if (!entry) throw new NotFoundError(`no such network: ${ref}`);
    return { record: decodeRecord<NetworkRecord>(entry.value, entry.key), entry };
  }

  /**
   * `kvnet network create` (and the local API): reserves a pool per family and a VNI, writes the
   * network. Input is checked first (pools planned, MTU chosen), so a refused request stores nothing;
   * a pool refused by the IPAM (overlap, bad range) releases the one already reserved.
   */
  async createNetwork(input: CreateNetworkInput): Promise<NetworkView> {
    const { store, ipam, logger } = this.ctx;
    if (await store.get(keys.netname(input.name))) throw new NameConflictError(`network with name ${input.name} already exists`);
    const options = input.options ?? {};
    let vni: number | undefined;
    if (options[VXLANID_OPTION] !== undefined) {
      const first = options[VXLANID_OPTION]!.split(',')[0]!.trim();
      if (!/^\d+$/.test(first)) throw new InvalidInputError(`invalid option ${VXLANID_OPTION} "${options[VXLANID_OPTION]}": is not a VXLAN id`);
      vni = Number(first);
    }
    const plan = planNetworkPools(input);
    const mtu = chooseNetworkMtu({ ...(input.mtu !== undefined ? { mtu: input.mtu } : {}), options, hasIpv6: plan.v6 !== undefined }, this.ctx.datapath);
    const nid = newId();
    const request = (shape: PoolShape, v6: boolean): Promise<PoolInfo> => ipam.requestPool({ owner: nid, v6, ...shape });
    const pool4 = plan.v4 ? await request(plan.v4, false) : undefined;
    let pool6: PoolInfo | undefined;
    try {
      if (plan.v6) pool6 = await request(plan.v6, true);
    } catch (err) {
      await releasePools(ipam, [pool4], (e) => logger.warn({ err: e, nid }, 'could not release the IPv4 pool of a refused create'));
      throw err;
    }
    const pool = (pool4 ?? pool6)!;
    const record = await this.createNetworkForPool({
      id: nid,
      name: input.name,
      pool,
      ...(pool4 && pool6 ? { pool6 } : {}),
      internal: input.internal ?? false,
      labels: input.labels ?? {},
      options,
      ownsPool: true,
      mtu,
      ...(vni !== undefined ? { vni } : {}),
    });
    return toNetworkView(record, [], this.ctx.datapath);
  }

  /**
   * The one path that writes a new network, for every face: allocates the VNI, writes record and
   * name in one transaction, and on any failure releases the VNI (and the pool when `ownsPool`), so
   * nothing is left behind. Resolves once this agent's view shows the network.
   */
  async createNetworkForPool<T extends NetworkRecord = NetworkRecord>(spec: NetworkSpec): Promise<T> {
    const { ipam, logger, records, cluster } = this.ctx;
    const log = logger.child({ nid: spec.id, network: spec.name });
    const v6 = spec.pool6 ?? (spec.pool.family === 6 ? spec.pool : undefined);
    let vni: number | undefined;
    let committed = false;
    try {
      const mtu = chooseNetworkMtu({ ...(spec.mtu !== undefined ? { mtu: spec.mtu } : {}), options: spec.options, hasIpv6: v6 !== undefined }, this.ctx.datapath);
      vni = await ipam.allocateVni({ network: spec.id, ...(spec.vni !== undefined ? { requested: spec.vni } : {}) });
      const record = {
        id: spec.id,
        name: spec.name,
        vni,
        ...poolFields(spec.pool, spec.gateway, ''),
        ...(v6 ? poolFields(v6, v6 === spec.pool ? spec.gateway : spec.gateway6, '6') : {}),
        mtu,
        internal: spec.internal,
        labels: spec.labels,
        options: spec.options,
        createdAt: new Date().toISOString(),
        createdBy: this.ctx.node.name,
        ...spec.extra,
      } as T;
      if (!(await records.createNetwork(record))) throw new NameConflictError(`network with name ${spec.name} already exists`);
      committed = true;
      log.info({ vni, subnet: record.subnet, subnet6: record.subnet6, mtu }, 'network created');
      await cluster.waitForView(keys.network(spec.id), true);
      return record;
    } finally {
      if (!committed) {
        if (vni !== undefined) await ipam.releaseVni(vni, spec.id).catch((err) => log.warn({ err }, 'could not release the VNI of a failed create'));
        if (spec.ownsPool) await releasePools(ipam, [spec.pool, spec.pool6], (err) => log.warn({ err }, 'could not release a pool of a failed create'));
      }
    }
  }

  async deleteNetwork(ref: string): Promise<void> {
    const { store, ipam, logger, records, cluster } = this.ctx;
    const { record, entry } = await this.resolveNetwork(ref);
    const log = logger.child({ nid: record.id, network: record.name });
    await this.refuseIfEndpoints(record);
    const marked = await store.putIf(entry.key, encodeDeleting(record, true), { revision: entry.revision });
    if (!marked.ok) throw new NetworkInUseError(`network ${record.name} changed while being removed; try again`);
    try {
      await this.refuseIfEndpoints(record);
    } catch (err) {
      await store.putIf(entry.key, encodeDeleting(record, false), { revision: marked.revision }).catch(() => undefined);
      throw err;
    }
    if (!(await records.deleteNetwork({ key: entry.key, revision: marked.revision }, record))) throw new NetworkInUseError(`network ${record.name} changed while being removed; try again`);
    log.info('network removed');
    await ipam.releaseVni(record.vni, record.id).catch((err) => log.warn({ err }, 'could not release the VNI of a removed network'));
    await ipam.releasePool(record.poolId, record.id).catch((err) => log.warn({ err }, 'could not release the pool of a removed network'));
    if (record.poolId6 && record.poolId6 !== record.poolId) {
      // a Docker-made network's IPv6 pool is owned by the id its own RequestPool minted
      const pool6 = await ipam.getPool(record.poolId6).catch(() => undefined);
      if (pool6) await ipam.releasePool(pool6.id, pool6.owner).catch((err) => log.warn({ err }, 'could not release the IPv6 pool of a removed network'));
    }
    await cluster.waitForView(entry.key, false);
  }

  private async refuseIfEndpoints(record: NetworkRecord): Promise<void> {
    const listing = await this.ctx.store.list(keys.endpointsOf(record.id));
    if (listing.entries.length === 0) return;
    const names = listing.entries.map((e) => {
      try {
        const ep = decodeRecord<EndpointRecord>(e.value, e.key);
        return `${ep.name} (on ${ep.node})`;
      } catch {
        return e.key.slice(e.key.lastIndexOf('/') + 1, e.key.lastIndexOf('/') + 13);
      }
    });
    throw new NetworkInUseError(`network ${record.name} has active endpoints: ${names.sort().join(', ')}`);
  }

  /** `opts.cni`: the endpoint is a CNI attachment (the CNI face finds it again by that). */
  async connect(ref: string, input: ConnectInput, opts: { cni?: CniAttachmentRef } = {}): Promise<EndpointView> {
    checkNetnsPath(input.netns);
    const resolved = await this.resolveNetwork(ref);
    // the network's endpoints are followed from before the write until the new one is plumbed
    const release = await this.ctx.cluster.follow(resolved.record.id);
    try {
      return await this.connectTo(resolved, input, opts);
    } finally {
      release();
    }
  }

  /** `resolved`: the network as just read; a retry reads it again (by id). */
  private async connectTo(resolved: { record: NetworkRecord; entry: KVEntry }, input: ConnectInput, opts: { cni?: CniAttachmentRef }): Promise<EndpointView> {
    const { store, logger, records, node } = this.ctx;
    for (let attempt = 1; ; attempt++) {
      const { record: net, entry: netEntry } = attempt === 1 ? resolved : await this.resolveNetwork(resolved.record.id);
      if (net.deleting) throw new NetworkInUseError(`network ${net.name} is being removed`);
      const eid = newId();
      const name = input.name ?? eid.slice(0, 12);
      const holder = await store.get(keys.epname(net.id, name));
      if (holder) {
        const repeated = input.name !== undefined ? await this.repeatedConnect(net, input, opts.cni, decodeText(holder.value)) : undefined;
        if (repeated) return repeated;
        throw new NameConflictError(`endpoint with name ${name} already exists in network ${net.name}`);
      }
      const ifname = this.chooseIfname(net, input);
      const log = logger.child({ nid: net.id, eid, network: net.name, endpoint: name });
      const pool4 = networkPool(net, 4);
      const pool6 = networkPool(net, 6);
      if (input.ip !== undefined) checkRequestedAddress(net, 'ip', input.ip, pool4);
      if (input.ip6 !== undefined) checkRequestedAddress(net, 'ip6', input.ip6, pool6);
      const { v4, v6 } = await this.allocateAddresses(eid, { pool4, pool6, ip: input.ip, ip6: input.ip6 });
      const first = (v4 ?? v6)!;
      const aliases = [...new Set(input.aliases ?? [])].filter((a) => a !== name);
      const record = newEndpointRecord(node, {
        id: eid,
        name,
        ...(aliases.length ? { aliases } : {}),
        network: net.id,
        address: first.address,
        ip: first.ip,
        ...(v6 ? { address6: v6.address, ip6: v6.ip } : {}),
        netns: input.netns,
        ifname,
        ...(opts.cni ? { cni: opts.cni } : {}),
      });
      let ok: boolean;
      try {
        ok = await records.createEndpoint(netEntry, record);
      } catch (err) {
        // The outcome is unknown: the endpoint may exist now. Keep the address rather than risk a duplicate.
        log.warn({ err, address: record.address, address6: record.address6 }, 'connect failed with an unknown outcome; addresses kept');
        throw err;
      }
      if (!ok) {
        await records.releaseAddresses(net, record);
        if (await store.get(keys.epname(net.id, name))) throw new NameConflictError(`endpoint with name ${name} already exists in network ${net.name}`);
        if (attempt >= CONNECT_MAX_ATTEMPTS) throw new NetworkInUseError(`network ${net.name} kept changing while connecting; try again`);
        continue;
      }
      log.info({ address: record.address, address6: record.address6, netns: record.netns }, 'endpoint created');
      return this.plumbOrRollBack(net, record, log);
    }
  }

  /** Plumbs a stored endpoint; when that fails, removes it again and throws what the data plane said. */
  private async plumbOrRollBack(net: NetworkRecord, record: EndpointRecord, log: CoreContext['logger']): Promise<EndpointView> {
    const mine = await this.plumb(record, { network: false });
    if (mine) {
      log.warn({ err: mine }, 'endpoint could not be plumbed; removing it again');
      await this.ctx.records.deleteEndpoint(record, { poolId: net.poolId, poolId6: net.poolId6 }).catch((err) => log.error({ err }, 'could not roll back the endpoint'));
      await this.ctx.reconciler.reconcileNow();
      throw mine.kind === 'invalid' || mine.code === 'KVNET_DATAPLANE_SANDBOX_NOT_FOUND' || mine.kind === 'conflict' ? new InvalidInputError(mine.message) : new PlumbingError(mine.message);
    }
    return toEndpointView(record);
  }

  /**
   * A connect repeated with the same request — same name, sandbox, interface, addresses, aliases and
   * CNI attachment, on this host — after the first one's outcome was unknown to its caller (the store
   * did not answer in time, but the endpoint was written; the caller tried again): the endpoint that
   * exists is the answer, plumbed, instead of "name already exists". Anything that differs is left
   * to the usual name conflict.
   */
  private async repeatedConnect(net: NetworkRecord, input: ConnectInput, cni: CniAttachmentRef | undefined, holder: string): Promise<EndpointView | undefined> {
    const { store, node, logger } = this.ctx;
    const entry = await store.get(keys.endpoint(net.id, holder));
    if (!entry) return undefined;
    const ep = decodeRecord<EndpointRecord>(entry.value, entry.key);
    const sameSet = (a: readonly string[] | undefined, b: readonly string[] | undefined): boolean => {
      const x = new Set(a ?? []);
      const y = new Set((b ?? []).filter((n) => n !== ep.name));
      return x.size === y.size && [...x].every((v) => y.has(v));
    };
    const same =
      ep.node === node.name &&
      ep.netns === input.netns &&
      (input.ifname === undefined || (ep.ifname ?? DEFAULT_IFNAME) === input.ifname) &&
      (input.ip === undefined || ep.ip === input.ip) &&
      (input.ip6 === undefined || ep.ip6 === input.ip6) &&
      sameSet(ep.aliases, input.aliases) &&
      JSON.stringify(ep.cni ?? null) === JSON.stringify(cni ?? null);
    if (!same) return undefined;
    const log = logger.child({ nid: net.id, eid: ep.id, network: net.name, endpoint: ep.name });
    log.info({ address: ep.address, netns: ep.netns }, 'connect repeated: the endpoint exists already (an earlier try wrote it); answering with it');
    return this.plumbOrRollBack(net, ep, log);
  }

  /**
   * Allocates an endpoint's address in each pool of its network (`ip`/`ip6`: those exactly), owned by
   * `eid`. When the second allocation fails the first is released again, so a refused connect holds
   * nothing.
   */
  async allocateAddresses(
    eid: string,
    req: { readonly pool4?: NetworkPool | undefined; readonly pool6?: NetworkPool | undefined; readonly ip?: string | undefined; readonly ip6?: string | undefined },
  ): Promise<{ v4?: AddressAllocation; v6?: AddressAllocation }> {
    const { ipam, logger } = this.ctx;
    const v4 = req.pool4 ? await ipam.allocateAddress(req.pool4.poolId, { owner: eid, ...(req.ip !== undefined ? { address: req.ip } : {}) }) : undefined;
    try {
      const v6 = req.pool6 ? await ipam.allocateAddress(req.pool6.poolId, { owner: eid, ...(req.ip6 !== undefined ? { address: req.ip6 } : {}) }) : undefined;
      return { ...(v4 ? { v4 } : {}), ...(v6 ? { v6 } : {}) };
    } catch (err) {
      if (v4) await ipam.releaseAddress(v4.poolId, v4.address, eid).catch((e) => logger.warn({ err: e, eid, address: v4.address }, 'could not release the IPv4 address of a refused connect; the janitor will'));
      throw err;
    }
  }

  /**
   * Waits until this agent's view shows a new local endpoint, runs a reconcile that includes it, and
   * returns the data plane's error for it — or, with `network`, for its network too — if any.
   */
  async plumb(record: EndpointRecord, opts: { network: boolean }): Promise<DataplaneError | undefined> {
    await this.ctx.cluster.waitForView(keys.endpoint(record.network, record.id), true);
    const errors = await this.ctx.reconciler.reconcileNow();
    const failed = errors.find((e) => e.object.endpoint === record.id || (opts.network && e.object.kind === 'network' && e.object.network === record.network));
    if (!failed && this.plumbHooks.length > 0) {
      const budget = new AbortController();
      await Promise.race([Promise.all(this.plumbHooks.map((h) => h(record))), sleep(PLUMB_HOOK_BUDGET_MS, budget.signal).catch(() => undefined)]);
      budget.abort();
    }
    return failed;
  }

  /**
   * The interface name inside the sandbox: as asked, or the first free ethN. Refuses a name another
   * endpoint of this host already uses in the same sandbox, and the gateway bridge interface's name
   * when the sandbox has (or will have) one.
   */
  private chooseIfname(net: NetworkRecord, input: ConnectInput): string {
    const view = this.ctx.cluster.view();
    const same = allEndpoints(view).filter((e) => e.node === this.ctx.node.name && e.netns === input.netns);
    const taken = new Map(same.map((e) => [e.ifname ?? DEFAULT_IFNAME, e]));
    const egress = this.ctx.config.gatewayBridge === 'none' ? undefined : EGRESS_IFNAME;
    const hasEgress = egress !== undefined && (!net.internal || same.some((e) => view.networks.get(e.network)?.internal === false));
    const ifname = input.ifname ?? defaultIfname(new Set(taken.keys()), egress);
    const holder = taken.get(ifname);
    if (holder) {
      const holderNet = view.networks.get(holder.network)?.name ?? holder.network.slice(0, 12);
      throw new NameConflictError(`interface ${ifname} in netns ${input.netns} is already used by endpoint ${holder.name} of network ${holderNet}`);
    }
    if (hasEgress && ifname === egress) {
      throw new InvalidInputError(`invalid ifname "${ifname}": it is the gateway bridge interface of netns ${input.netns}; choose another name`);
    }
    return ifname;
  }

  async disconnect(netRef: string, epRef: string): Promise<void> {
    const { store, records, logger, cluster, node } = this.ctx;
    const { record: net } = await this.resolveNetwork(netRef);
    let eid: string | undefined;
    if (ID_PATTERN.test(epRef)) eid = epRef;
    else {
      const byName = await store.get(keys.epname(net.id, epRef)).catch(() => undefined);
      if (byName) eid = decodeText(byName.value);
      else if (/^[0-9a-f]{1,63}$/.test(epRef)) {
        const eps = [...(await this.endpointsOf(net.id))].map((e) => e.id).filter((id) => id.startsWith(epRef));
        if (eps.length === 1) eid = eps[0];
      }
    }
    const entry = eid ? await store.get(keys.endpoint(net.id, eid)) : undefined;
    if (!entry) throw new NotFoundError(`no such endpoint: ${epRef} in network ${net.name}`);
    const ep = { ...decodeRecord<EndpointRecord>(entry.value, entry.key), id: eid!, network: net.id };
    if (!(await records.deleteEndpoint(ep, { revision: entry.revision, poolId: net.poolId, poolId6: net.poolId6 }))) throw new NetworkInUseError(`endpoint ${ep.name} changed while being removed; try again`);
    logger.info({ nid: net.id, eid, network: net.name, endpoint: ep.name }, 'endpoint removed');
    await cluster.waitForView(entry.key, false);
    if (ep.node === node.name) await this.ctx.reconciler.reconcileNow();
  }
}

function encodeDeleting(record: NetworkRecord, deleting: boolean): Uint8Array {
  return encodeRecord({ ...record, deleting });
}
