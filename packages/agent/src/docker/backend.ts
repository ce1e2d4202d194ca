/**
 * What the Docker plugin needs from kvnet, as one narrow contract ({@link DockerBackend}), and its
 * implementation on the cluster store, IPAM and {@link NetworkService} ({@link StoreDockerBackend}).
 *
 * Identity mapping. Docker's IPAM calls come before the driver calls and carry no network or endpoint
 * id, so kvnet ids are minted where the first resource is reserved and Docker's ids are bound to them:
 * - `RequestPool` mints the kvnet network id (the pool's owner); `CreateNetwork` writes the network
 *   record under that id with `docker.networks[<node>] = <Docker network id>` (a local-scope Docker
 *   network has a different id on every host);
 * - `RequestAddress` mints the kvnet endpoint id (the address's owner); `CreateEndpoint` writes the
 *   endpoint record under it with `docker = {networkId, endpointId}` and `handoff` = the host-side
 *   interface name the data plane creates for dockerd to move into the container.
 * So every kvnet rule keeps holding: pool owner = network id, address owner = endpoint id (the janitor
 * and the reaper release by those), and `kvnet network rm` releases a Docker-made network's pool.
 *
 * IPv6. Docker requests each family's pool with its own RequestPool (`V6: true` for IPv6) and names it
 * by the PoolID returned, so an IPv6 pool's PoolID is its owner + {@link IPV6_POOL_ID_SUFFIX}. A
 * dual-stack network made through Docker has two owners — the IPv4 pool's is the network id, the IPv6
 * pool keeps the id its own RequestPool minted (the record names it in `poolId6`; it is released with
 * its own owner). Likewise each RequestAddress mints an owner; CreateEndpoint makes the endpoint id
 * (the IPv4 address's owner) own the IPv6 address too, so both are released with the endpoint.
 */

import { AddressInUseError, DEFAULT_ADDRESS_SPACE, type AddressAllocation, type PoolInfo } from '@kvnet/ipam';
import { ipFamily } from '@kvnet/netaddr';
import { allEndpoints } from '../cluster-view.ts';
import type { AgentContext } from '../context.ts';
import { ConcurrentChangeError, InvalidInputError, NameConflictError, NotFoundError, PlumbingError } from '../errors.ts';
import { decodeRecord, decodeText, ID_PATTERN, keys, NAME_MAX_CHARS, NAME_PATTERN, networkPool, newId, type EndpointRecord, type NetworkRecord } from '../layout.ts';
import { newEndpointRecord } from '../records.ts';
import { ADOPT_NETWORK_OPTION } from './protocol.ts';

/** Host-side name of a Docker endpoint's veth before dockerd moves it: prefix + endpoint id (≤ 15 bytes). */
export const HANDOFF_IFNAME_PREFIX = 'kvd';
export const HANDOFF_IFNAME_ID_CHARS = 12;
/** Attempts of an endpoint write whose network record changed meanwhile (bound on another host). */
const CREATE_ENDPOINT_ATTEMPTS = 3;
/** Appended to an IPv6 pool's owner to make its Docker PoolID (an IPv4 pool's PoolID is its owner). */
export const IPV6_POOL_ID_SUFFIX = '-v6';

/** Docker's PoolID of a kvnet pool: its owner, + {@link IPV6_POOL_ID_SUFFIX} for an IPv6 pool. */
export function dockerPoolId(pool: Pick<PoolInfo, 'owner' | 'family'>): string {
  return pool.family === 6 ? `${pool.owner}${IPV6_POOL_ID_SUFFIX}` : pool.owner;
}

/** The owner and family a Docker PoolID names; undefined for anything kvnet did not hand out. */
export function parseDockerPoolId(id: string): { readonly owner: string; readonly family: 4 | 6 } | undefined {
  const v6 = id.endsWith(IPV6_POOL_ID_SUFFIX);
  const owner = v6 ? id.slice(0, -IPV6_POOL_ID_SUFFIX.length) : id;
  return ID_PATTERN.test(owner) ? { owner, family: v6 ? 6 : 4 } : undefined;
}

/** A kvnet network record made through Docker. */
export interface DockerNetworkRecord extends NetworkRecord {
  docker?: {
    /** node name → that host's Docker network id. */
    networks: Record<string, string>;
    /** True until the Docker network's name has been learned from the Engine API. */
    provisionalName?: boolean;
    /** `--ipam-opt`s the network was created with (learned with the name; repeated on every host's copy). */
    ipamOptions?: Record<string, string>;
  };
}

/** What the Engine API tells about a Docker network that the plugin protocol does not. */
export interface DockerNetworkDetails {
  /** `--label`s (Docker does not send them to the driver). */
  readonly labels?: Record<string, string>;
  /** `--ipam-opt`s. */
  readonly ipamOptions?: Record<string, string>;
}

/** A kvnet endpoint record made through Docker (its `handoff` interface is what dockerd moves into the container). */
export interface DockerEndpointRecord extends EndpointRecord {
  docker?: { networkId: string; endpointId: string };
}

/**
 * A container's aliases as an endpoint keeps them: valid names only (Docker's rule), without the
 * endpoint's own name, each once, sorted (so an unchanged set compares equal).
 */
export function cleanAliases(aliases: readonly string[], name: string): string[] {
  return [...new Set(aliases.filter((a) => a !== name && NAME_PATTERN.test(a) && a.length <= NAME_MAX_CHARS))].sort();
}

export function handoffIfname(eid: string): string {
  return `${HANDOFF_IFNAME_PREFIX}${eid.slice(0, HANDOFF_IFNAME_ID_CHARS)}`;
}

/** The name a Docker network has in kvnet until its Docker name is known. */
export function provisionalNetworkName(dockerNetworkId: string): string {
  return `docker-${dockerNetworkId.slice(0, 12)}`;
}

export interface DockerNetworkInput {
  readonly dockerNetworkId: string;
  /** The first pool (IPv4, or IPv6 for an IPv6-only network): its owner becomes the network id. */
  readonly poolId: string;
  /** Bare IP. */
  readonly gateway: string;
  /** The IPv6 pool of a dual-stack network, and its bare gateway. */
  readonly poolId6?: string;
  readonly gateway6?: string;
  readonly internal: boolean;
  readonly options: Record<string, string>;
}

export interface DockerEndpointInput {
  readonly dockerNetworkId: string;
  readonly dockerEndpointId: string;
  /** `ip/len` (IPv4) as Docker's IPAM (kvnet's) gave it; empty or absent on an IPv6-only network. */
  readonly address?: string;
  /** `ip/len` (IPv6) as kvnet's IPAM gave it, on a network with IPv6. */
  readonly address6?: string;
  /** A MAC the user gave (`--mac-address`); default `02:42:` + the IPv4 bytes. */
  readonly mac?: string;
  /**
   * The container's name when the caller could tell it (DockerDriver); unique in the network across
   * all hosts. Without it the endpoint is named by its Docker id until the container's name is learned.
   */
  readonly name?: string;
  /** The container's aliases on this network, when the caller knows them (else DockerNetworkSync learns them). */
  readonly aliases?: readonly string[];
}

/**
 * Everything the Docker plugin does to kvnet. Errors carry a `code` and a human message naming the
 * thing; the plugin edge puts the message in `Err`/`Error`.
 */
export interface DockerBackend {
  /**
   * Reserves a pool (IPv6 with `v6`) for a new kvnet network, whose id is minted here and owns the
   * pool. Docker's PoolID is {@link dockerPoolId} of it (the owner): it stays the same when the pool is
   * reshaped, while kvnet's own pool id does not.
   */
  requestPool(req: { subnet?: string; ipRange?: string; v6?: boolean }): Promise<PoolInfo>;
  /**
   * The pool of one family of an existing kvnet network, for the Docker network the agent creates on
   * this host to mirror it (`--ipam-opt kvnet.network=<nid>`); refuses another subnet.
   */
  adoptPool(nid: string, subnet?: string, v6?: boolean): Promise<PoolInfo>;
  /** The pool by Docker's PoolID ({@link dockerPoolId}); undefined when gone or being released. */
  getPool(dockerPoolId: string): Promise<PoolInfo | undefined>;
  /** The kvnet pool with exactly this subnet. */
  findPool(subnet: string): Promise<PoolInfo | undefined>;
  /** True once a network record uses the pool (CreateNetwork has happened). */
  poolHasNetwork(dockerPoolId: string): Promise<boolean>;
  /**
   * Gives a pool not yet bound to a network another gateway and aux addresses (Docker sends them
   * after RequestPool): the pool is released and requested again by the same owner, so for a moment
   * its subnet is free.
   */
  reshapePool(dockerPoolId: string, shape: { gateway: string; auxAddresses: Record<string, string> }): Promise<PoolInfo>;
  /** Releases a pool unless a network still uses it (that network's removal releases it). */
  releasePool(dockerPoolId: string): Promise<void>;
  /** Allocates an address for a future endpoint (its id is minted here and owns the address). */
  allocateAddress(dockerPoolId: string, address?: string): Promise<AddressAllocation>;
  /** Releases an address that never became an endpoint; no-op for an endpoint's or an unknown one. */
  releaseAddress(dockerPoolId: string, address: string): Promise<void>;
  /** Writes the kvnet network for a pool (kvnet pool id); refuses a pool that already has one. */
  createNetwork(input: DockerNetworkInput): Promise<DockerNetworkRecord>;
  /** Sets the kvnet name (and labels, IPAM options) of a network created with a provisional name. */
  nameNetwork(nid: string, name: string, details?: DockerNetworkDetails): Promise<void>;
  /** Removes the network bound to this Docker id (refused while any host has an endpoint on it). */
  deleteNetwork(dockerNetworkId: string): Promise<void>;
  /** Creates the endpoint and plumbs its host-side interface; returns its MAC and that interface. */
  createEndpoint(input: DockerEndpointInput): Promise<{ mac: string; ifname: string }>;
  /** The host-side interface of a created endpoint, and its kvnet id. */
  joinEndpoint(dockerNetworkId: string, dockerEndpointId: string): Promise<{ ifname: string; endpointId: string }>;
  /** The kvnet id of this host's endpoint for a Docker endpoint, if there is one. */
  localEndpointId(dockerNetworkId: string, dockerEndpointId: string): string | undefined;
  /** Deletes the endpoint, releases its address, unplumbs it. Unknown endpoints are not an error. */
  deleteEndpoint(dockerNetworkId: string, dockerEndpointId: string): Promise<void>;
  /** The kvnet network bound to a Docker network id on this host. */
  findNetwork(dockerNetworkId: string): DockerNetworkRecord | undefined;
  /** Renames an endpoint (to its container's name); refused when the name is taken in the network. */
  nameEndpoint(nid: string, eid: string, name: string): Promise<void>;
  /** Sets an endpoint's aliases (its container's `--network-alias`es, learned from dockerd). */
  aliasEndpoint(nid: string, eid: string, aliases: readonly string[]): Promise<void>;
}

/** The {@link DockerBackend} on kvnet's store, IPAM and network service. */
export class StoreDockerBackend implements DockerBackend {
  constructor(private readonly ctx: AgentContext) {}

  async requestPool(req: { subnet?: string; ipRange?: string; v6?: boolean }): Promise<PoolInfo> {
    if (req.ipRange && !req.subnet) throw new InvalidInputError(`invalid ip-range "${req.ipRange}": an ip range needs --subnet`);
    return this.ctx.ipam.requestPool({ owner: newId(), v6: req.v6 === true, ...(req.subnet ? { subnet: req.subnet } : {}), ...(req.ipRange ? { ipRange: req.ipRange } : {}) });
  }

  async getPool(dockerPoolId: string): Promise<PoolInfo | undefined> {
    const id = parseDockerPoolId(dockerPoolId);
    if (!id) return undefined;
    return (await this.ctx.ipam.listPools(DEFAULT_ADDRESS_SPACE)).find((p) => p.owner === id.owner && p.family === id.family && !p.releasing);
  }

  async adoptPool(nid: string, subnet?: string, v6?: boolean): Promise<PoolInfo> {
    const entry = ID_PATTERN.test(nid) ? await this.ctx.store.get(keys.network(nid)) : undefined;
    if (!entry) throw new NotFoundError(`no kvnet network ${nid} to adopt`);
    const rec = decodeRecord<NetworkRecord>(entry.value, entry.key);
    const family = v6 ? 6 : 4;
    const ref = networkPool(rec, family);
    if (!ref) throw new InvalidInputError(`kvnet network ${rec.name} has no IPv${family} subnet (its subnet is ${rec.subnet})${family === 4 ? '; an IPv6-only network needs a Docker that can create one (--ipv4=false, Docker 28 and later)' : ''}`);
    const pool = await this.ctx.ipam.getPool(ref.poolId);
    if (!pool || pool.releasing) throw new NotFoundError(`no kvnet network ${nid} to adopt`);
    if (subnet && subnet !== pool.subnet) throw new InvalidInputError(`kvnet network ${rec.name} has IPv${family} subnet ${pool.subnet}, not ${subnet}`);
    return pool;
  }

  async findPool(subnet: string): Promise<PoolInfo | undefined> {
    return (await this.ctx.ipam.listPools(DEFAULT_ADDRESS_SPACE)).find((p) => p.subnet === subnet && !p.releasing);
  }

  async poolHasNetwork(dockerPoolId: string): Promise<boolean> {
    const pool = await this.getPool(dockerPoolId);
    return pool !== undefined && (await this.networkUsing(pool)) !== undefined;
  }

  /** The network whose record names `pool` (its owner's record, or one whose `poolId6` it is). */
  private async networkUsing(pool: PoolInfo): Promise<NetworkRecord | undefined> {
    const view = this.ctx.cluster.view();
    for (const n of view.networks.values()) if (n.poolId === pool.id || n.poolId6 === pool.id) return n;
    const entry = await this.ctx.store.get(keys.network(pool.owner));
    if (!entry) return undefined;
    const rec = decodeRecord<NetworkRecord>(entry.value, entry.key);
    return rec.poolId === pool.id || rec.poolId6 === pool.id ? rec : undefined;
  }

  async reshapePool(dockerPoolId: string, shape: { gateway: string; auxAddresses: Record<string, string> }): Promise<PoolInfo> {
    const { ipam } = this.ctx;
    const pool = await this.mustGetPool(dockerPoolId);
    const sameAux = JSON.stringify(Object.entries(pool.auxAddresses).sort()) === JSON.stringify(Object.entries(shape.auxAddresses).sort());
    if (pool.gateway.split('/')[0] === shape.gateway && sameAux) return pool;
    if (await this.networkUsing(pool)) throw new InvalidInputError(`pool ${pool.subnet} already belongs to a network; its gateway cannot change`);
    await ipam.releasePool(pool.id, pool.owner);
    return ipam.requestPool({
      owner: pool.owner,
      v6: pool.family === 6,
      subnet: pool.subnet,
      gateway: shape.gateway,
      ...(pool.ipRange ? { ipRange: pool.ipRange } : {}),
      ...(Object.keys(shape.auxAddresses).length ? { auxAddresses: shape.auxAddresses } : {}),
    });
  }

  async releasePool(dockerPoolId: string): Promise<void> {
    const pool = await this.getPool(dockerPoolId);
    if (!pool) return;
    if (await this.networkUsing(pool)) return; // released with the network
    await this.ctx.ipam.releasePool(pool.id, pool.owner);
  }

  async allocateAddress(dockerPoolId: string, address?: string): Promise<AddressAllocation> {
    const pool = await this.mustGetPool(dockerPoolId);
    try {
      return await this.ctx.ipam.allocateAddress(pool.id, { owner: newId(), ...(address ? { address } : {}) });
    } catch (err) {
      if (!(err instanceof AddressInUseError)) throw err;
      // IPAM names its own ids; say which network and which container (and where) has the address
      const view = this.ctx.cluster.view();
      const net = await this.networkUsing(pool);
      const holder = net ? view.endpoints.get(net.id)?.get(err.holder) : undefined;
      const by = holder ? `${holder.name} on ${holder.node}` : err.holder.startsWith('(') ? `the network itself ${err.holder}` : `endpoint ${err.holder.slice(0, 12)}`;
      throw new NameConflictError(`address ${err.address} is already in use in network ${net?.name ?? pool.subnet} by ${by}`);
    }
  }

  async releaseAddress(dockerPoolId: string, address: string): Promise<void> {
    const pool = await this.getPool(dockerPoolId);
    if (!pool) return;
    const ip = address.split('/')[0]!;
    const holder = (await this.ctx.ipam.listAllocations(pool.id)).find((a) => a.ip === ip);
    if (!holder) return;
    // An endpoint's address is released with the endpoint (DeleteEndpoint); never free a live one here.
    const net = await this.networkUsing(pool);
    if (await this.ctx.store.get(keys.endpoint(net?.id ?? pool.owner, holder.owner))) return;
    await this.ctx.ipam.releaseAddress(pool.id, holder.address, holder.owner);
  }

  async createNetwork(input: DockerNetworkInput): Promise<DockerNetworkRecord> {
    const { store, ipam, logger, node, records, cluster, networks } = this.ctx;
    const pool = await ipam.getPool(input.poolId);
    if (!pool || pool.releasing) throw new NotFoundError(`no such kvnet pool: ${input.poolId}`);
    const nid = pool.owner;
    const existing = await store.get(keys.network(nid));
    if (existing) {
      // The pool was adopted (the only way to reach an existing network's pool): bind this host's Docker network.
      const rec = decodeRecord<DockerNetworkRecord>(existing.value, existing.key);
      if (rec.docker?.networks[node.name] === input.dockerNetworkId) return rec; // a retried call
      if (rec.deleting) throw new InvalidInputError(`network ${rec.name} is being removed`);
      const bound: DockerNetworkRecord = { ...rec, docker: { ...rec.docker, networks: { ...rec.docker?.networks, [node.name]: input.dockerNetworkId } } };
      if (!(await records.updateNetwork(existing, rec, bound))) throw new ConcurrentChangeError(`network ${rec.name} changed while being bound to Docker network ${input.dockerNetworkId.slice(0, 12)}; try again`);
      logger.info({ nid, docker: input.dockerNetworkId, network: rec.name }, 'docker network bound');
      await cluster.waitUntil((v) => (v.networks.get(nid) as DockerNetworkRecord | undefined)?.docker?.networks[node.name] === input.dockerNetworkId);
      return bound;
    }
    let pool6: PoolInfo | undefined;
    if (input.poolId6 !== undefined) {
      pool6 = await ipam.getPool(input.poolId6);
      if (!pool6 || pool6.releasing || pool6.family !== 6) throw new NotFoundError(`no such kvnet IPv6 pool: ${input.poolId6}`);
    }
    // Docker's RequestPool reserved the pools and its ReleasePool frees them: the network does not own them.
    return networks.createNetworkForPool<DockerNetworkRecord>({
      id: nid,
      name: provisionalNetworkName(input.dockerNetworkId),
      pool,
      ...(pool6 ? { pool6 } : {}),
      gateway: input.gateway,
      ...(input.gateway6 !== undefined ? { gateway6: input.gateway6 } : {}),
      internal: input.internal,
      labels: {},
      options: input.options,
      ownsPool: false,
      extra: { docker: { networks: { [node.name]: input.dockerNetworkId }, provisionalName: true } },
    });
  }

  async nameNetwork(nid: string, name: string, details: DockerNetworkDetails = {}): Promise<void> {
    const { store, logger, records, cluster } = this.ctx;
    if (!NAME_PATTERN.test(name) || name.length > NAME_MAX_CHARS) throw new InvalidInputError(`invalid network name "${name}"`);
    const entry = await store.get(keys.network(nid));
    if (!entry) throw new NotFoundError(`no such network: ${nid}`);
    const rec = decodeRecord<DockerNetworkRecord>(entry.value, entry.key);
    if (rec.name === name) return;
    const ipamOptions = Object.fromEntries(Object.entries(details.ipamOptions ?? {}).filter(([k]) => k !== ADOPT_NETWORK_OPTION));
    const updated: DockerNetworkRecord = {
      ...rec,
      name,
      labels: { ...rec.labels, ...details.labels },
      docker: { networks: rec.docker?.networks ?? {}, ...(Object.keys(ipamOptions).length ? { ipamOptions } : {}) },
    };
    if (!(await records.updateNetwork(entry, rec, updated))) {
      if (await store.get(keys.netname(name))) throw new NameConflictError(`network with name ${name} already exists`);
      throw new ConcurrentChangeError(`network ${rec.name} changed while being named ${name}; try again`);
    }
    logger.info({ nid, network: name }, 'docker network named');
    await cluster.waitForView(entry.key, true);
  }

  findNetwork(dockerNetworkId: string): DockerNetworkRecord | undefined {
    let elsewhere: DockerNetworkRecord | undefined;
    for (const n of this.ctx.cluster.view().networks.values() as Iterable<DockerNetworkRecord>) {
      const bound = n.docker?.networks ?? {};
      if (bound[this.ctx.node.name] === dockerNetworkId) return n;
      // Scope global (dockerd with --cluster-store): one Docker id cluster-wide, and hosts other than the
      // creator get CreateEndpoint for a network they never saw. Local-scope ids never collide.
      if (!elsewhere && Object.values(bound).includes(dockerNetworkId)) elsewhere = n;
    }
    return elsewhere;
  }

  private mustFindNetwork(dockerNetworkId: string): DockerNetworkRecord {
    const n = this.findNetwork(dockerNetworkId);
    if (!n) throw new NotFoundError(`no kvnet network is bound to Docker network ${dockerNetworkId.slice(0, 12)} on node ${this.ctx.node.name}`);
    return n;
  }

  async deleteNetwork(dockerNetworkId: string): Promise<void> {
    const n = this.findNetwork(dockerNetworkId);
    if (!n) return; // already gone (a retry, or removed with `kvnet network rm`)
    await this.ctx.networks.deleteNetwork(n.id);
  }

  private findEndpoint(dockerNetworkId: string, dockerEndpointId: string): DockerEndpointRecord | undefined {
    const me = this.ctx.node.name;
    return allEndpoints(this.ctx.cluster.view()).find((e) => {
      const d = (e as DockerEndpointRecord).docker;
      return e.node === me && d?.endpointId === dockerEndpointId && d.networkId === dockerNetworkId;
    }) as DockerEndpointRecord | undefined;
  }

  async createEndpoint(input: DockerEndpointInput): Promise<{ mac: string; ifname: string }> {
    const existing = this.findEndpoint(input.dockerNetworkId, input.dockerEndpointId);
    if (existing) return { mac: existing.mac, ifname: existing.handoff! };
    const net = this.mustFindNetwork(input.dockerNetworkId);
    if (net.deleting) throw new InvalidInputError(`network ${net.name} is being removed`);
    // the network's endpoints are followed from before the write until the new one is plumbed
    const release = await this.ctx.cluster.follow(net.id);
    try {
      return await this.createEndpointOn(net, input);
    } finally {
      release();
    }
  }

  private async createEndpointOn(net: DockerNetworkRecord, input: DockerEndpointInput): Promise<{ mac: string; ifname: string }> {
    const { store, ipam, logger, node, records, networks } = this.ctx;
    // The addresses were allocated by RequestAddress, one owner each; the first one's owner is this endpoint's kvnet id.
    const v4 = input.address ? await this.allocationOf(net, 4, input.address) : undefined;
    const v6 = input.address6 ? await this.allocationOf(net, 6, input.address6) : undefined;
    const first = v4 ?? v6;
    if (!first) throw new InvalidInputError(`the endpoint has no address in network ${net.name}: create the network with --ipam-driver kvnet`);
    const eid = first.owner;
    const ip = first.ip;
    if (await store.get(keys.endpoint(net.id, eid))) throw new NameConflictError(`address ${ip} already belongs to an endpoint of network ${net.name}`);
    let address6 = v6;
    if (v6 && v4 && v6.owner !== eid) {
      // the endpoint owns both addresses, so they go with it (disconnect, reaping, the janitor)
      if (await store.get(keys.endpoint(net.id, v6.owner))) throw new NameConflictError(`address ${v6.ip} already belongs to an endpoint of network ${net.name}`);
      await ipam.releaseAddress(v6.poolId, v6.address, v6.owner);
      address6 = await ipam.allocateAddress(v6.poolId, { owner: eid, address: v6.address });
    }
    const given = input.name !== undefined && NAME_PATTERN.test(input.name) && input.name.length <= NAME_MAX_CHARS ? input.name : undefined;
    const name = given ?? input.dockerEndpointId.slice(0, 12);
    const aliases = input.aliases !== undefined ? cleanAliases(input.aliases, name) : undefined;
    const record = newEndpointRecord<DockerEndpointRecord>(node, {
      id: eid,
      name,
      ...(aliases !== undefined ? { aliases } : {}),
      network: net.id,
      address: first.address,
      ip,
      ...(address6 ? { address6: address6.address, ip6: address6.ip } : {}),
      ...(input.mac ? { mac: input.mac } : {}),
      handoff: handoffIfname(eid),
      docker: { networkId: input.dockerNetworkId, endpointId: input.dockerEndpointId },
    });
    for (let attempt = 1; ; attempt++) {
      const netEntry = await store.get(keys.network(net.id));
      if (!netEntry) throw new NotFoundError(`no such network: ${net.name}`);
      if (await records.createEndpoint(netEntry, record)) break;
      const holder = await store.get(keys.epname(net.id, name));
      if (!holder) {
        if (attempt < CREATE_ENDPOINT_ATTEMPTS) continue; // the network record changed (e.g. bound on another host): try again
        throw new InvalidInputError(`network ${net.name} changed while creating an endpoint; try again`);
      }
      // Docker names containers uniquely per host, so an endpoint of this name on this node is a
      // leftover of the same container (dockerd crashed or restarted without DeleteEndpoint): replace it.
      const stale = given && attempt < CREATE_ENDPOINT_ATTEMPTS ? this.staleLocalEndpoint(net.id, decodeText(holder.value)) : undefined;
      if (!stale) throw new NameConflictError(`endpoint with name ${name} already exists in network ${net.name}`);
      logger.warn({ nid: net.id, eid: stale.id, endpoint: name, docker: stale.docker.endpointId.slice(0, 12) }, 'replacing a leftover endpoint of the same container (dockerd dropped it without DeleteEndpoint)');
      await this.deleteEndpoint(stale.docker.networkId, stale.docker.endpointId);
    }
    const log = logger.child({ nid: net.id, eid, network: net.name, docker: input.dockerEndpointId.slice(0, 12) });
    log.info({ address: record.address, address6: record.address6, ifname: record.handoff }, 'docker endpoint created');
    const failed = await networks.plumb(record, { network: true });
    if (failed) {
      log.warn({ err: failed }, 'docker endpoint could not be plumbed');
      throw new PlumbingError(failed.message);
    }
    return { mac: record.mac, ifname: record.handoff! };
  }

  /**
   * The allocation of `address` (`ip/len`) in the network's pool of `family` (RequestAddress made it);
   * InvalidInputError naming the address when kvnet did not hand it out (an aux address, another IPAM).
   */
  private async allocationOf(net: NetworkRecord, family: 4 | 6, address: string): Promise<AddressAllocation> {
    const ip = address.split('/')[0]!;
    if (ipFamily(ip) !== family) throw new InvalidInputError(`invalid address "${address}": not an IPv${family} address`);
    const pool = networkPool(net, family);
    if (!pool) throw new InvalidInputError(`invalid address "${address}": network ${net.name} has no IPv${family} subnet`);
    const alloc = (await this.ctx.ipam.listAllocations(pool.poolId)).find((a) => a.ip === ip);
    if (alloc) return { ...alloc, poolId: pool.poolId };
    const aux = Object.entries(pool.auxAddresses).find(([, a]) => a === ip);
    if (aux) throw new InvalidInputError(`address ${ip} is reserved in network ${net.name} as auxiliary address ${aux[0]} (--aux-address); choose another --ip${family === 6 ? '6' : ''}`);
    throw new InvalidInputError(`address ${address} was not allocated by kvnet in network ${net.name}; use --ipam-driver kvnet`);
  }

  /** This node's Docker endpoint `eid` of network `nid`, if the view has it. */
  private staleLocalEndpoint(nid: string, eid: string): (DockerEndpointRecord & { docker: { networkId: string; endpointId: string } }) | undefined {
    const ep = this.ctx.cluster.view().endpoints.get(nid)?.get(eid) as DockerEndpointRecord | undefined;
    if (!ep || ep.node !== this.ctx.node.name || !ep.docker) return undefined;
    return ep as DockerEndpointRecord & { docker: { networkId: string; endpointId: string } };
  }

  async joinEndpoint(dockerNetworkId: string, dockerEndpointId: string): Promise<{ ifname: string; endpointId: string }> {
    const ep = this.findEndpoint(dockerNetworkId, dockerEndpointId);
    if (!ep?.handoff) throw new NotFoundError(`no kvnet endpoint for Docker endpoint ${dockerEndpointId.slice(0, 12)}`);
    return { ifname: ep.handoff, endpointId: ep.id };
  }

  localEndpointId(dockerNetworkId: string, dockerEndpointId: string): string | undefined {
    return this.findEndpoint(dockerNetworkId, dockerEndpointId)?.id;
  }

  async deleteEndpoint(dockerNetworkId: string, dockerEndpointId: string): Promise<void> {
    const { logger, records, cluster, reconciler } = this.ctx;
    const ep = this.findEndpoint(dockerNetworkId, dockerEndpointId);
    if (!ep) return;
    const net = cluster.view().networks.get(ep.network);
    await records.deleteEndpoint(ep, net ? { poolId: net.poolId, poolId6: net.poolId6 } : {});
    logger.info({ nid: ep.network, eid: ep.id, docker: dockerEndpointId.slice(0, 12) }, 'docker endpoint removed');
    await cluster.waitForView(keys.endpoint(ep.network, ep.id), false);
    await reconciler.reconcileNow();
  }

  async nameEndpoint(nid: string, eid: string, name: string): Promise<void> {
    const { store, logger, records, cluster } = this.ctx;
    const clean = name.replace(/^\//, ''); // the Engine API may prefix container names with "/"
    if (!NAME_PATTERN.test(clean) || clean.length > NAME_MAX_CHARS) throw new InvalidInputError(`invalid endpoint name "${name}"`);
    const entry = await store.get(keys.endpoint(nid, eid));
    if (!entry) throw new NotFoundError(`no such endpoint: ${eid}`);
    const ep = decodeRecord<DockerEndpointRecord>(entry.value, entry.key);
    if (ep.name === clean) return;
    if (!(await records.updateEndpoint(entry, ep, { ...ep, name: clean }))) {
      const net = cluster.view().networks.get(nid)?.name ?? nid.slice(0, 12);
      if (await store.get(keys.epname(nid, clean))) throw new NameConflictError(`endpoint with name ${clean} already exists in network ${net}`);
      throw new ConcurrentChangeError(`endpoint ${ep.name} changed while being named ${clean}; try again`);
    }
    logger.info({ nid, eid, endpoint: clean }, 'docker endpoint named after its container');
  }

  async aliasEndpoint(nid: string, eid: string, aliases: readonly string[]): Promise<void> {
    const { store, logger, records } = this.ctx;
    const entry = await store.get(keys.endpoint(nid, eid));
    if (!entry) throw new NotFoundError(`no such endpoint: ${eid}`);
    const ep = decodeRecord<DockerEndpointRecord>(entry.value, entry.key);
    const clean = cleanAliases(aliases, ep.name);
    if (JSON.stringify(ep.aliases) === JSON.stringify(clean)) return;
    if (!(await records.updateEndpoint(entry, ep, { ...ep, aliases: clean }))) throw new ConcurrentChangeError(`endpoint ${ep.name} changed while its aliases were set; try again`);
    logger.info({ nid, eid, endpoint: ep.name, aliases: clean }, 'docker endpoint aliases learned from its container');
  }

  private async mustGetPool(dockerPoolId: string): Promise<PoolInfo> {
    const pool = await this.getPool(dockerPoolId);
    if (!pool) throw new NotFoundError(`no such kvnet pool: ${dockerPoolId}`);
    return pool;
  }
}
