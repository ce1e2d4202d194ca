/**
 * The Docker NetworkDriver + IpamDriver semantics on top of a {@link DockerBackend}: which Docker call
 * means what for kvnet, and the exact answers Docker expects. Transport and validation live in
 * protocol.ts and plugin-server.ts.
 *
 * Call order a real dockerd uses (DOCKER-PLUGIN.md): RequestPool → RequestAddress(gateway) → RequestAddress(aux…) →
 * CreateNetwork; RequestAddress → CreateEndpoint → Join; Leave → DeleteEndpoint → ReleaseAddress;
 * ReleaseAddress(gateway, aux) → ReleasePool → DeleteNetwork. Hence:
 * - a RequestAddress with an address for a pool that has no network yet is an aux address (answered,
 *   reserved when CreateNetwork reshapes the pool); the gateway request is answered from the pool;
 * - ReleasePool of a pool whose network exists does nothing: DeleteNetwork (which Docker sends after
 *   it, and which kvnet may refuse while another host has endpoints) releases it.
 *
 * The network's Docker name is not in CreateNetwork; it is read from the local Engine API once dockerd
 * has stored the network (right after CreateNetwork returns), see {@link DockerDriver.learnName}.
 */

import type { Logger } from 'pino';
import { sleep } from '@kvnet/store';
import { dockerPoolId, type DockerBackend } from './backend.ts';
import type { DockerEngine, EngineContainer } from './engine.ts';
import {
  ADOPT_NETWORK_OPTION,
  GATEWAY_ADDRESS_TYPE,
  KVNET_ADDRESS_SPACE,
  OPTION_GENERIC,
  OPTION_INTERNAL,
  REQUEST_ADDRESS_TYPE,
  type CreateEndpointRequest,
  type CreateNetworkRequest,
  type IpamData,
  type EndpointRequest,
  type JoinRequest,
  type JoinResponse,
  type NetworkRequest,
  type PluginHandlers,
  type RequestAddressRequest,
  type RequestPoolRequest,
} from './protocol.ts';
import { cidrContainsIp, parseInterfaceAddress, parseIp } from '@kvnet/netaddr';
import { ConcurrentChangeError, InvalidInputError, NameConflictError } from '../errors.ts';

/** Interface name prefix inside the container: eth0, eth1, … */
export const CONTAINER_IFNAME_PREFIX = 'eth';
/** Learning a network's name: attempts and the pause between them (doubling, capped). */
export const NAME_LEARN_ATTEMPTS = 22;
export const NAME_LEARN_BASE_MS = 10;
export const NAME_LEARN_CAP_MS = 2_000;
/** Container states in which a container holds its endpoints. */
const RUNNING_STATES: ReadonlySet<string> = new Set(['running', 'paused']);
/** Budget for finding, during CreateEndpoint, the container being connected (one Engine API list). */
export const CONTAINER_LOOKUP_TIMEOUT_MS = 2_000;

export interface DockerDriverOptions {
  readonly backend: DockerBackend;
  readonly logger: Logger;
  /** `local` (default): works on every Docker version; `global`: for dockerd with --cluster-store. */
  readonly scope?: 'local' | 'global';
  /** The local Engine API, to learn network names; without it networks keep their provisional name. */
  readonly engine?: DockerEngine;
  /**
   * Around every DeleteNetwork of a kvnet network (`nid`): `finished` gets kvnet's refusal, if it
   * refused — dockerd removes its network anyway.
   */
  readonly onDelete?: { starting(nid: string): void; finished(nid: string, refusal: string | undefined): void };
  /** The names face's side of Join and Leave (the route to the resolver address); absent with `--dns-address off`. */
  readonly names?: DockerNamesHooks;
  /** After every Join: the container starts right after, and its aliases can be learned then (DockerNetworkSync). */
  readonly onJoined?: () => void;
}

/** What Join and Leave ask of the names face (names/face.ts). */
export interface DockerNamesHooks {
  /** The resolver address (the start-up log checks that dockerd's `dns` has it). */
  readonly address: string;
  /** The `StaticRoutes` for a Join of kvnet endpoint `endpointId` into `sandboxKey` (remembered). */
  dockerJoin(endpointId: string, sandboxKey: string): Array<{ Destination: string; RouteType: number; NextHop: string }>;
  /** A Leave of kvnet endpoint `endpointId` (moves the route when it held it); never throws. */
  dockerLeave(endpointId: string): Promise<void>;
}

function stringOptions(generic: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (generic && typeof generic === 'object') {
    for (const [k, v] of Object.entries(generic as Record<string, unknown>)) out[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  return out;
}

export class DockerDriver implements PluginHandlers {
  private readonly abort = new AbortController();
  private readonly learning = new Set<Promise<void>>();

  constructor(private readonly opts: DockerDriverOptions) {}

  /** Stops background work (name learning). */
  async stop(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled([...this.learning]);
  }

  /** Resolves when every name being learned is learned (or given up); for tests. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.learning]);
  }

  // ---- NetworkDriver ----

  networkCapabilities(): { Scope: 'local' | 'global'; ConnectivityScope: 'local' | 'global' } {
    return { Scope: this.opts.scope ?? 'local', ConnectivityScope: 'global' };
  }

  async createNetwork(req: CreateNetworkRequest): Promise<void> {
    const { backend } = this.opts;
    if (req.IPv4Data.length > 1 || req.IPv6Data.length > 1) {
      throw new InvalidInputError(`a kvnet network has at most one IPv4 and one IPv6 subnet; got ${req.IPv4Data.length} IPv4 and ${req.IPv6Data.length} IPv6 subnets`);
    }
    if (req.IPv4Data.length === 0 && req.IPv6Data.length === 0) throw new InvalidInputError('the network has no subnet: create it with --ipam-driver kvnet');
    const shape = async (data: IpamData): Promise<{ poolId: string; gateway: string }> => {
      if (data.AddressSpace !== KVNET_ADDRESS_SPACE) {
        throw new InvalidInputError(
          `kvnet networks need kvnet's IPAM, which keeps addresses unique across hosts (Docker's default IPAM would hand out the same addresses on every host): add --ipam-driver kvnet to docker network create`,
        );
      }
      const pool = await backend.findPool(data.Pool);
      if (!pool) throw new InvalidInputError(`subnet ${data.Pool} was not reserved by kvnet's IPAM; create the network with --ipam-driver kvnet`);
      const gateway = (data.Gateway ?? pool.gateway).split('/')[0]!;
      const aux: Record<string, string> = {};
      for (const [name, a] of Object.entries(data.AuxAddresses ?? {})) aux[name] = a.split('/')[0]!;
      const shaped = await backend.reshapePool(dockerPoolId(pool), { gateway, auxAddresses: aux });
      return { poolId: shaped.id, gateway };
    };
    const v4 = req.IPv4Data[0] ? await shape(req.IPv4Data[0]) : undefined;
    const v6 = req.IPv6Data[0] ? await shape(req.IPv6Data[0]) : undefined;
    const first = (v4 ?? v6)!;
    const record = await backend.createNetwork({
      dockerNetworkId: req.NetworkID,
      poolId: first.poolId,
      gateway: first.gateway,
      ...(v4 && v6 ? { poolId6: v6.poolId, gateway6: v6.gateway } : {}),
      internal: req.Options[OPTION_INTERNAL] === true || req.Options[OPTION_INTERNAL] === 'true',
      options: stringOptions(req.Options[OPTION_GENERIC]),
    });
    if (this.opts.engine) this.track(this.learnName(record.id, req.NetworkID));
  }

  private track(p: Promise<void>): void {
    this.learning.add(p);
    void p.finally(() => this.learning.delete(p));
  }

  /**
   * dockerd stores the network only after CreateNetwork returns, so its name is read from the Engine
   * API afterwards, retrying until it shows up.
   */
  private async learnName(nid: string, dockerNetworkId: string): Promise<void> {
    const { engine, backend, logger } = this.opts;
    const log = logger.child({ nid, docker: dockerNetworkId.slice(0, 12) });
    let delay = NAME_LEARN_BASE_MS;
    for (let attempt = 1; attempt <= NAME_LEARN_ATTEMPTS && !this.abort.signal.aborted; attempt++) {
      await sleep(delay, this.abort.signal).catch(() => undefined);
      if (this.abort.signal.aborted) return;
      delay = Math.min(delay * 2, NAME_LEARN_CAP_MS);
      let name: string | undefined;
      try {
        const net = await engine!.inspectNetwork(dockerNetworkId, this.abort.signal);
        if (!net) continue;
        name = net.Name;
        await backend.nameNetwork(nid, net.Name, { labels: net.Labels ?? {}, ipamOptions: net.IPAM?.Options ?? {} });
        return;
      } catch (err) {
        if (err instanceof ConcurrentChangeError) {
          log.debug({ err, attempt }, 'the network changed while being named; trying again');
          continue;
        }
        if (err instanceof NameConflictError && name !== undefined) {
          await this.undoDuplicate(dockerNetworkId, name, log);
          return;
        }
        if ((err as { kind?: string }).kind === 'conflict' || (err as { kind?: string }).kind === 'invalid' || (err as { kind?: string }).kind === 'not-found') {
          log.error({ err }, 'cannot give the kvnet network its Docker name; it keeps its provisional name');
          return;
        }
        log.debug({ err, attempt }, 'network name not learned yet');
      }
    }
    if (!this.abort.signal.aborted) log.warn('gave up learning the Docker name of a network; it keeps its provisional name');
  }

  /**
   * `docker network create NAME` on this host made a Docker network whose name another kvnet network
   * already has (made on another host, not mirrored here yet, or with `kvnet network create`). Docker
   * checks names only on its own host and does not send the name with CreateNetwork, so this is found
   * only now: the new network is removed from dockerd again (which removes its kvnet side and pool), and
   * the existing one is mirrored here under its name. If it is already in use it stays, under its
   * provisional name, and the clash is logged.
   */
  private async undoDuplicate(dockerNetworkId: string, name: string, log: Logger): Promise<void> {
    try {
      await this.opts.engine!.removeNetwork(dockerNetworkId, this.abort.signal);
      log.error({ network: name }, `network with name ${name} already exists in kvnet: the Docker network ${dockerNetworkId.slice(0, 12)} just created on this host is removed, and the existing ${name} is used instead`);
    } catch (err) {
      log.error({ err, network: name }, `network with name ${name} already exists in kvnet; the Docker network ${dockerNetworkId.slice(0, 12)} made on this host cannot be removed and keeps its provisional kvnet name`);
    }
  }

  /**
   * `docker network rm` / `prune`. A refusal (another host still has endpoints on it) reaches only
   * dockerd's log: dockerd deletes its network whatever a remote driver answers here. So the refusal is
   * also handed to {@link DockerDriverOptions.onDelete}, which puts the network back into this
   * dockerd at once, with the reason on it.
   */
  async deleteNetwork(req: NetworkRequest): Promise<void> {
    const net = this.opts.backend.findNetwork(req.NetworkID);
    if (net) this.opts.onDelete?.starting(net.id);
    let refusal: string | undefined;
    try {
      await this.opts.backend.deleteNetwork(req.NetworkID);
    } catch (err) {
      refusal = (err as Error).message;
      throw err;
    } finally {
      if (net) this.opts.onDelete?.finished(net.id, refusal);
    }
  }

  async createEndpoint(req: CreateEndpointRequest): Promise<{ Interface?: { MacAddress?: string } }> {
    const iface = req.Interface ?? { Address: '', AddressIPv6: '', MacAddress: '' };
    if (!iface.Address && !iface.AddressIPv6) throw new InvalidInputError('the endpoint has no address: create the network with --ipam-driver kvnet');
    const container = await this.containerBeingConnected(req.NetworkID, req.EndpointID);
    const r = await this.opts.backend.createEndpoint({
      dockerNetworkId: req.NetworkID,
      dockerEndpointId: req.EndpointID,
      ...(iface.Address ? { address: iface.Address } : {}),
      ...(iface.AddressIPv6 ? { address6: iface.AddressIPv6 } : {}),
      ...(iface.MacAddress ? { mac: iface.MacAddress.toLowerCase() } : {}),
      ...(container ? { name: container.name } : {}),
    });
    // Only a field Docker left empty may be filled in ("driver modified interface … address" otherwise).
    return iface.MacAddress ? {} : { Interface: { MacAddress: r.mac } };
  }

  /**
   * The name of the container this CreateEndpoint is for, so the endpoint takes it at once and a name
   * already used in the network on another host is refused before the container starts ("endpoint
   * with name c1 already exists in network multi", as dockerd's cluster store did). The plugin
   * protocol does not carry it; dockerd's container list does, indirectly: a container being started
   * on a network (`docker run --net`, `docker start`, a restart policy) is listed with that network in
   * its settings and not running yet. Exactly one such container → its name. None or several (several containers
   * starting on the network at once, or `docker network connect` of a running container), or no
   * answer within {@link CONTAINER_LOOKUP_TIMEOUT_MS} → undefined: the endpoint starts under its id and
   * takes the container's name once dockerd lists it (DockerNetworkSync), where a clash can only be
   * logged.
   */
  private async containerBeingConnected(dockerNetworkId: string, dockerEndpointId: string): Promise<{ name: string } | undefined> {
    const { engine, backend, logger } = this.opts;
    const net = backend.findNetwork(dockerNetworkId);
    if (!engine || !net || net.docker?.provisionalName) return undefined;
    let listed: EngineContainer[];
    try {
      listed = await engine.listContainers({ network: [net.name] }, AbortSignal.any([this.abort.signal, AbortSignal.timeout(CONTAINER_LOOKUP_TIMEOUT_MS)]));
    } catch (err) {
      logger.debug({ err, network: net.name }, 'cannot list containers to name a new endpoint; it is named later');
      return undefined;
    }
    // A container that is not running holds no endpoint, whatever id its settings still carry (after a
    // power loss dockerd restarts it with the id of the endpoint it lost); a running one is being
    // connected only while it has no endpoint id on this network yet.
    const starting = listed.filter((c) => {
      const settings = c.NetworkSettings?.Networks?.[net.name];
      if (settings == null) return false;
      return !RUNNING_STATES.has(c.State) || !settings.EndpointID || settings.EndpointID === dockerEndpointId;
    });
    if (starting.length !== 1) return undefined;
    const name = starting[0]!.Names[0]?.replace(/^\//, '');
    // Not its aliases yet: a container being started may not list them all (DNSNames are completed at
    // start); DockerNetworkSync learns them from the running container.
    return name ? { name } : undefined;
  }

  async deleteEndpoint(req: EndpointRequest): Promise<void> {
    await this.opts.backend.deleteEndpoint(req.NetworkID, req.EndpointID);
  }

  async endpointOperInfo(_req: EndpointRequest): Promise<Record<string, unknown>> {
    return {};
  }

  async join(req: JoinRequest): Promise<JoinResponse> {
    const { ifname, endpointId } = await this.opts.backend.joinEndpoint(req.NetworkID, req.EndpointID);
    // The route to the resolver address, for the sandbox's first kvnet interface only (names/face.ts).
    const routes = this.opts.names && req.SandboxKey ? this.opts.names.dockerJoin(endpointId, req.SandboxKey) : [];
    this.opts.onJoined?.();
    // No Gateway: Docker then attaches docker_gwbridge for egress and published ports (not on --internal).
    return { InterfaceName: { SrcName: ifname, DstPrefix: CONTAINER_IFNAME_PREFIX }, ...(routes.length ? { StaticRoutes: routes } : {}), DisableGatewayService: false };
  }

  async leave(req: EndpointRequest): Promise<void> {
    // dockerd moves the interface out of the sandbox itself (after this answer); DeleteEndpoint removes it.
    // Before that, the names face moves the sandbox's resolver route off it if it carried it.
    const eid = this.opts.backend.localEndpointId(req.NetworkID, req.EndpointID);
    if (eid && this.opts.names) await this.opts.names.dockerLeave(eid);
  }

  // ---- IpamDriver ----

  ipamCapabilities(): { RequiresMACAddress: boolean; RequiresRequestReplay: boolean } {
    // No MAC from Docker: kvnet gives every endpoint its IP-derived MAC in CreateEndpoint.
    return { RequiresMACAddress: false, RequiresRequestReplay: false };
  }

  defaultAddressSpaces(): { LocalDefaultAddressSpace: string; GlobalDefaultAddressSpace: string } {
    return { LocalDefaultAddressSpace: KVNET_ADDRESS_SPACE, GlobalDefaultAddressSpace: KVNET_ADDRESS_SPACE };
  }

  async requestPool(req: RequestPoolRequest): Promise<{ PoolID: string; Pool: string; Data: Record<string, string> }> {
    if (req.AddressSpace && req.AddressSpace !== KVNET_ADDRESS_SPACE) throw new InvalidInputError(`unknown address space "${req.AddressSpace}"; kvnet has only "${KVNET_ADDRESS_SPACE}"`);
    if (req.SubPool && !req.Pool) throw new InvalidInputError(`invalid ip-range "${req.SubPool}": an ip range needs --subnet`);
    const adopt = req.Options[ADOPT_NETWORK_OPTION];
    const pool = adopt
      ? await this.opts.backend.adoptPool(adopt, req.Pool || undefined, req.V6)
      : await this.opts.backend.requestPool({ ...(req.Pool ? { subnet: req.Pool } : {}), ...(req.SubPool ? { ipRange: req.SubPool } : {}), v6: req.V6 });
    return { PoolID: dockerPoolId(pool), Pool: pool.subnet, Data: {} };
  }

  async releasePool(req: { PoolID: string }): Promise<void> {
    await this.opts.backend.releasePool(req.PoolID);
  }

  async requestAddress(req: RequestAddressRequest): Promise<{ Address: string; Data: Record<string, string> }> {
    const { backend } = this.opts;
    const pool = await backend.getPool(req.PoolID);
    if (!pool) throw new InvalidInputError(`no such kvnet pool: ${req.PoolID}`);
    const cidr = parseInterfaceAddress(pool.subnet)!.network;
    const withLen = (ip: string): string => `${ip}/${cidr.prefix}`;
    const inside = (ip: string): string => {
      const bare = ip.split('/')[0]!;
      const parsed = parseIp(bare);
      if (parsed?.family !== cidr.family) throw new InvalidInputError(`invalid address "${ip}": not an IPv${cidr.family} address`);
      if (!cidrContainsIp(cidr, parsed)) throw new InvalidInputError(`invalid address "${ip}": outside subnet ${pool.subnet}`);
      return bare;
    };
    if (req.Options?.[REQUEST_ADDRESS_TYPE] === GATEWAY_ADDRESS_TYPE) {
      return { Address: req.Address ? withLen(inside(req.Address)) : pool.gateway, Data: {} };
    }
    if (req.Address && (Object.values(pool.auxAddresses).includes(req.Address.split('/')[0]!) || !(await backend.poolHasNetwork(req.PoolID)))) {
      // an aux address (--aux-address): reserved in the pool when CreateNetwork arrives
      return { Address: withLen(inside(req.Address)), Data: {} };
    }
    const alloc = await backend.allocateAddress(req.PoolID, req.Address ? inside(req.Address) : undefined);
    return { Address: alloc.address, Data: {} };
  }

  async releaseAddress(req: { PoolID: string; Address: string }): Promise<void> {
    const pool = await this.opts.backend.getPool(req.PoolID);
    if (!pool) return;
    const ip = req.Address.split('/')[0]!;
    if (ip === pool.gateway.split('/')[0] || Object.values(pool.auxAddresses).includes(ip)) return; // part of the pool
    await this.opts.backend.releaseAddress(req.PoolID, ip);
  }
}
