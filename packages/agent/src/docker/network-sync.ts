/**
 * Makes every kvnet network appear in this host's dockerd, and disappear with it. With the plugin's
 * default `local` scope Docker keeps a network only on the host where `docker network create` ran;
 * this closes the gap: for each kvnet network this host's dockerd lacks, it creates a Docker network
 * of the same name through the Engine API, driver and IPAM `kvnet`, with the network's subnets (IPv4
 * and IPv6, `EnableIPv6`; an IPv6-only one with `EnableIPv4: false`, which Docker 28 and later honour),
 * gateways, ip-ranges, aux addresses, `--internal`, options (with its MTU as
 * `com.docker.network.driver.mtu`, so `docker network inspect` shows it), labels and IPAM options, plus the IPAM option
 * `kvnet.network=<nid>` so the plugin adopts the existing pool instead of reserving a new one (and
 * CreateNetwork binds the new Docker id to the same kvnet network). A Docker network of driver kvnet
 * whose kvnet network is gone is removed from dockerd.
 *
 * {@link DockerNetworkSync.run} is idempotent and cheap when nothing changed; call it after every
 * change of the view (the agent does it after each reconcile) and it converges. Errors are logged and
 * retried on the next run.
 */

import type { Logger } from 'pino';
import type { ClusterView } from '../cluster-view.ts';
import { allEndpoints } from '../cluster-view.ts';
import { networkPools } from '../layout.ts';
import { MTU_OPTION } from '../network-mtu.ts';
import type { DockerEndpointRecord, DockerNetworkRecord } from './backend.ts';
import { ADOPT_NETWORK_OPTION, PLUGIN_NAME } from './protocol.ts';
import { containerAliases, type DockerEngine, type EngineContainer, type EngineEndpointSettings, type EngineNetwork } from './engine.ts';
import { cleanAliases } from './backend.ts';

/**
 * A Docker endpoint dockerd does not list (in `GET /networks/<id>` → Containers) this long after it
 * was created is stale: dockerd crashed or restarted and dropped it without Leave/DeleteEndpoint.
 * The grace covers the moment between CreateEndpoint and Join, when dockerd does not list it yet.
 */
export const STALE_ENDPOINT_GRACE_MS = 60_000;
/** Container states (`GET /containers/json` → State) in which a container keeps its network endpoints. */
const LIVE_CONTAINER_STATES: ReadonlySet<string> = new Set(['running', 'paused']);

export interface DockerNetworkSyncOptions {
  readonly engine: DockerEngine;
  readonly node: string;
  readonly logger: Logger;
  /** Removes a Docker endpoint of this node (DockerBackend.deleteEndpoint); without it stale endpoints are only logged. */
  readonly removeEndpoint?: (dockerNetworkId: string, dockerEndpointId: string) => Promise<void>;
  /** Renames a kvnet endpoint to its container's name (DockerBackend.nameEndpoint). */
  readonly nameEndpoint?: (nid: string, eid: string, name: string) => Promise<void>;
  /** Sets a kvnet endpoint's aliases to its container's on that network (DockerBackend.aliasEndpoint). */
  readonly aliasEndpoint?: (nid: string, eid: string, aliases: readonly string[]) => Promise<void>;
  /**
   * Create missing kvnet networks in dockerd and remove orphaned ones (default true). False for the
   * plugin's `global` scope, where dockerd itself shares networks through its cluster store.
   */
  readonly mirrorNetworks?: boolean;
  /** The name dockerd knows this plugin by (default {@link PLUGIN_NAME}). */
  readonly driverName?: string;
  /** Default {@link STALE_ENDPOINT_GRACE_MS}. */
  readonly staleAfterMs?: number;
  readonly now?: () => number;
}

export interface SyncResult {
  readonly created: string[];
  readonly removed: string[];
  /** Kvnet endpoint ids removed because dockerd no longer has them. */
  readonly staleEndpoints: string[];
  /** Endpoints dockerd does not list yet (between CreateEndpoint and the end of Join): run again soon to name them. */
  pending: number;
  readonly errors: Array<{ network: string; message: string }>;
}

/**
 * Label on a Docker network this host's dockerd deleted although kvnet refused (`docker network rm` or
 * `prune` while another host had endpoints on it) and the sync put back: when, and kvnet's reason —
 * what `docker network inspect` shows, since `docker network rm` itself reports success.
 */
export const REFUSED_REMOVAL_LABEL = 'kvnet.removal-refused';
/** How long after a refused removal the sync keeps trying to put the network back (dockerd drops it right after DeleteNetwork). */
export const RESTORE_WINDOW_MS = 10_000;
/** Pause between those attempts. */
export const RESTORE_RETRY_MS = 50;
/**
 * A network bound on this host that vanished from dockerd is made again only after this long, unless a
 * refused removal explains it ({@link DockerNetworkSync.restoreRefused} makes it at once, with the
 * reason): dockerd drops a network from its list before it asks the plugin to delete it (`docker
 * network prune` notably), and a copy made in that gap would hide the refusal that follows.
 */
export const VANISHED_GRACE_MS = 3_000;

/** The Engine API body that makes a Docker network mirroring `n` (`notice`: a {@link REFUSED_REMOVAL_LABEL} value). */
export function dockerNetworkSpec(n: DockerNetworkRecord, driverName: string = PLUGIN_NAME, notice?: string): Record<string, unknown> {
  const pools = networkPools(n);
  const hasV4 = pools.some((p) => p.family === 4);
  const hasV6 = pools.some((p) => p.family === 6);
  return {
    Name: n.name,
    Driver: driverName,
    CheckDuplicate: true,
    Internal: n.internal,
    ...(hasV6 ? { EnableIPv6: true } : {}),
    ...(hasV4 ? {} : { EnableIPv4: false }),
    Labels: { ...n.labels, ...(notice ? { [REFUSED_REMOVAL_LABEL]: notice } : {}) },
    Options: { ...n.options, ...(n.mtu !== undefined ? { [MTU_OPTION]: String(n.mtu) } : {}) },
    IPAM: {
      Driver: driverName,
      Options: { ...n.docker?.ipamOptions, [ADOPT_NETWORK_OPTION]: n.id },
      Config: pools.map((p) => ({
        Subnet: p.subnet,
        Gateway: p.gateway,
        ...(p.ipRange ? { IPRange: p.ipRange } : {}),
        ...(Object.keys(p.auxAddresses).length ? { AuxiliaryAddresses: p.auxAddresses } : {}),
      })),
    },
  };
}

export class DockerNetworkSync {
  private running: Promise<SyncResult> | undefined;
  /** Endpoint id → the container name it could not take (another endpoint of the network had it). */
  private readonly unnameable = new Map<string, string>();
  private again = false;
  /** nid → why its removal was refused, until the network is back in dockerd. */
  private readonly refused = new Map<string, string>();
  /**
   * Networks dockerd is removing right now (DeleteNetwork in flight): not created again meanwhile —
   * dockerd may already have dropped them from its list, and a copy made now would lack the notice of
   * a refusal that is still to come.
   */
  private readonly removing = new Set<string>();
  /** nid → when its Docker network bound on this host was first seen missing from dockerd. */
  private readonly vanished = new Map<string, number>();

  /** DeleteNetwork of `nid` started on this host. */
  /**
   * Nothing waits for a later pass: no network waiting out its grace or its refused removal, none being
   * removed, no endpoint waiting for a name. A pass then only has work when networks or this host's
   * endpoints changed.
   */
  get settled(): boolean {
    return this.unnameable.size === 0 && this.refused.size === 0 && this.removing.size === 0 && this.vanished.size === 0 && !this.running;
  }

  holdBack(nid: string): void {
    this.removing.add(nid);
  }

  /** DeleteNetwork of `nid` ended (see {@link restoreRefused} for a refusal). */
  release(nid: string): void {
    this.removing.delete(nid);
  }

  constructor(private readonly opts: DockerNetworkSyncOptions) {}

  /**
   * kvnet refused to remove network `nid` but dockerd removed its copy anyway: the next passes put it
   * back (labelled with the reason), retrying every {@link RESTORE_RETRY_MS} for up to
   * {@link RESTORE_WINDOW_MS} while dockerd finishes removing its copy. Resolves when it is back (or
   * the window is over, for the periodic sync to finish).
   */
  async restoreRefused(nid: string, reason: string, view: () => ClusterView, signal?: AbortSignal): Promise<boolean> {
    this.refused.set(nid, `${new Date().toISOString()} docker network rm refused: ${reason}`);
    const deadline = Date.now() + RESTORE_WINDOW_MS;
    while (Date.now() < deadline && !signal?.aborted) {
      const name = view().networks.get(nid)?.name;
      if (!name) return false; // removed for real after all
      const r = await this.run(view).catch(() => undefined);
      if (r?.created.includes(name)) return true;
      await new Promise((res) => setTimeout(res, RESTORE_RETRY_MS));
    }
    return false;
  }

  /** One pass (joined if one is running; then one more pass follows it). */
  run(view: () => ClusterView): Promise<SyncResult> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let result: SyncResult;
      do {
        this.again = false;
        result = await this.pass(view());
      } while (this.again);
      return result;
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async pass(view: ClusterView): Promise<SyncResult> {
    const { engine, node, logger } = this.opts;
    const result: SyncResult = { created: [], removed: [], staleEndpoints: [], pending: 0, errors: [] };
    const driverName = this.opts.driverName ?? PLUGIN_NAME;
    const docker = await engine.listNetworks(driverName);
    const dockerIds = new Set(docker.map((d) => d.Id));
    const byName = new Map<string, EngineNetwork>(docker.map((d) => [d.Name, d]));
    const boundHere = new Set<string>();
    const mirror = this.opts.mirrorNetworks ?? true;
    const now = (this.opts.now ?? Date.now)();
    for (const nid of [...this.vanished.keys()]) if (!view.networks.has(nid)) this.vanished.delete(nid);
    for (const n of view.networks.values() as Iterable<DockerNetworkRecord>) {
      const mine = n.docker?.networks[node];
      if (mine) boundHere.add(mine);
      if (!mirror) continue;
      if (n.deleting || n.docker?.provisionalName || this.removing.has(n.id)) continue;
      if (mine && dockerIds.has(mine)) {
        this.vanished.delete(n.id);
        continue;
      }
      if (mine && !this.refused.has(n.id)) {
        const since = this.vanished.get(n.id) ?? now;
        this.vanished.set(n.id, since);
        if (now - since < VANISHED_GRACE_MS) {
          result.pending++; // look again soon
          continue;
        }
      }
      if (byName.has(n.name)) continue; // being created right now (CreateNetwork binds it), or a name clash logged below
      try {
        const notice = this.refused.get(n.id);
        await engine.createNetwork(dockerNetworkSpec(n, driverName, notice));
        result.created.push(n.name);
        this.vanished.delete(n.id);
        if (notice) {
          this.refused.delete(n.id);
          logger.warn({ nid: n.id, network: n.name, notice }, 'put a kvnet network back into the local dockerd, which removed it although kvnet refused');
        } else logger.info({ nid: n.id, network: n.name }, 'kvnet network created in the local dockerd');
      } catch (err) {
        result.errors.push({ network: n.name, message: (err as Error).message });
        logger.warn({ err, nid: n.id, network: n.name }, 'cannot create the kvnet network in the local dockerd; will retry');
      }
    }
    for (const d of mirror ? docker : []) {
      if (boundHere.has(d.Id)) continue;
      // Only networks this plugin made that kvnet no longer has; an unbound one whose kvnet network is
      // still being written is left for the next pass.
      const kvnetOwned = [...view.networks.values()].some((n) => n.name === d.Name);
      if (kvnetOwned) continue;
      try {
        await engine.removeNetwork(d.Id);
        result.removed.push(d.Name);
        logger.info({ docker: d.Id.slice(0, 12), network: d.Name }, 'removed a Docker network whose kvnet network is gone');
      } catch (err) {
        result.errors.push({ network: d.Name, message: (err as Error).message });
        logger.warn({ err, network: d.Name }, 'cannot remove a Docker network whose kvnet network is gone; will retry');
      }
    }
    await this.removeStaleEndpoints(view, result);
    return result;
  }

  /**
   * One `GET /containers/json` when local endpoints are unnamed or past the grace: an endpoint a running
   * local container is attached through gets that container's name (CreateEndpoint does not carry it); one no
   * running container refers to after the grace is stale and removed. The container list is dockerd's own
   * memory: in the `global` scope a network read from an unreachable cluster store is missing from
   * `GET /networks` and `GET /networks/<id>` answers 404, which must not read as "its endpoints are gone".
   */
  private async removeStaleEndpoints(view: ClusterView, result: SyncResult): Promise<void> {
    const { engine, node, logger } = this.opts;
    const graceMs = this.opts.staleAfterMs ?? STALE_ENDPOINT_GRACE_MS;
    const now = (this.opts.now ?? Date.now)();
    type Docked = DockerEndpointRecord & { docker: { networkId: string; endpointId: string } };
    const isOld = (e: Docked): boolean => now - Date.parse(e.createdAt) >= graceMs;
    // A name refused because another endpoint of the network had it is tried again once that one is gone.
    for (const [eid, wanted] of this.unnameable) {
      const ep = allEndpoints(view).find((x) => x.id === eid);
      if (!ep || !allEndpoints(view).some((x) => x.network === ep.network && x.name === wanted)) this.unnameable.delete(eid);
    }
    const unnamed = (e: Docked): boolean => e.name === e.docker.endpointId.slice(0, 12) && !this.unnameable.has(e.id);
    // Aliases are learned from the running container (Docker ≥ 25 completes DNSNames at start), once.
    const unaliased = (e: Docked): boolean => e.aliases === undefined && this.opts.aliasEndpoint !== undefined;
    const candidates = allEndpoints(view).filter(
      (e): e is Docked => e.node === node && (e as DockerEndpointRecord).docker !== undefined && (isOld(e as Docked) || unnamed(e as Docked) || unaliased(e as Docked)),
    );
    if (candidates.length === 0) return;
    let containers: EngineContainer[];
    try {
      containers = await engine.listContainers({});
    } catch {
      return; // dockerd unreachable: decide nothing
    }
    // Only a running (or paused) container holds its endpoint: an exited one may still carry the id of
    // an endpoint dockerd dropped (a power-off, a restart that could not reach this plugin).
    const live = new Map<string, string>();
    const containerOf = new Map<string, string>();
    for (const c of containers.filter((x) => LIVE_CONTAINER_STATES.has(x.State))) {
      for (const s of Object.values(c.NetworkSettings?.Networks ?? {})) {
        if (!s?.EndpointID) continue;
        live.set(s.EndpointID, c.Names[0]?.replace(/^\//, '') ?? '');
        containerOf.set(s.EndpointID, c.Id);
      }
    }
    // Stale ones go first: after a power loss the container's new endpoint wants the name its old,
    // stale endpoint still holds.
    for (const e of candidates) {
      if (live.has(e.docker.endpointId)) continue;
      if (!isOld(e)) {
        if (unnamed(e) || unaliased(e)) result.pending++;
        continue;
      }
      logger.warn({ nid: e.network, eid: e.id, docker: e.docker.endpointId.slice(0, 12), address: e.address }, 'dockerd no longer has this endpoint (crash or restart without DeleteEndpoint); removing it');
      if (!this.opts.removeEndpoint) continue;
      try {
        await this.opts.removeEndpoint(e.docker.networkId, e.docker.endpointId);
        result.staleEndpoints.push(e.id);
      } catch (err) {
        result.errors.push({ network: e.network, message: (err as Error).message });
      }
    }
    for (const e of candidates) {
      const containerName = live.get(e.docker.endpointId);
      if (!containerName || !unnamed(e) || !this.opts.nameEndpoint) continue;
      try {
        await this.opts.nameEndpoint(e.network, e.id, containerName);
      } catch (err) {
        this.unnameable.set(e.id, containerName);
        logger.warn({ err, eid: e.id, endpoint: containerName }, 'cannot give the endpoint its container name yet; it keeps its id until the name is free');
      }
    }
    // Aliases (`--network-alias`, `docker network connect --alias`; on Docker ≥ 25 also the short id and
    // hostname, its DNSNames) are learned once from the running container, by inspecting it (the list
    // leaves them out). Docker cannot change an endpoint's aliases afterwards.
    const inspected = new Map<string, Record<string, EngineEndpointSettings | null> | undefined>();
    for (const e of candidates) {
      const containerName = live.get(e.docker.endpointId);
      const container = containerOf.get(e.docker.endpointId);
      if (!containerName || !container || !unaliased(e)) continue;
      try {
        if (!inspected.has(container)) inspected.set(container, await engine.containerNetworks(container));
        const settings = Object.values(inspected.get(container) ?? {}).find((x) => x?.EndpointID === e.docker.endpointId);
        if (!settings) continue;
        await this.opts.aliasEndpoint!(e.network, e.id, cleanAliases(containerAliases(settings), containerName));
      } catch (err) {
        result.errors.push({ network: e.network, message: (err as Error).message });
      }
    }
  }
}
