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
 */

import { statfsSync, statSync } from 'node:fs';
import type { PoolInfo } from '@kvnet/ipam';
import type { DataplaneError } from '@kvnet/dataplane';
import { sleep, type KVEntry } from '@kvnet/store';
import type { ConnectInput, CreateNetworkInput } from './api/schemas.ts';
import { allEndpoints } from './cluster-view.ts';
import type { CoreContext } from './context.ts';
import { InvalidInputError, NameConflictError, NetworkInUseError, NotFoundError, PlumbingError } from './errors.ts';
import { cidrContains, parseCidr, parseIpv4 } from './ipv4.ts';
import { decodeRecord, decodeText, encodeRecord, ID_PATTERN, keys, newId, type CniAttachmentRef, type EndpointRecord, type NetworkRecord } from './layout.ts';
import { DEFAULT_IFNAME, EGRESS_IFNAME } from './desired-state.ts';
import { newEndpointRecord } from './records.ts';
import { defaultIfname } from './egress.ts';

/** Connect retries when the network record changed under it (e.g. an aborted `rm`). */
export const CONNECT_MAX_ATTEMPTS = 3;
const NSFS_MAGIC = 0x6e736673;
/** Docker's option naming a VXLAN id for the network. */
export const VXLANID_OPTION = 'com.docker.network.driver.overlay.vxlanid_list';

/** The API's network shape: the record without kvnet's bookkeeping, with its endpoints. */
export type NetworkView = Pick<NetworkRecord, 'id' | 'name' | 'vni' | 'subnet' | 'gateway' | 'ipRange' | 'auxAddresses' | 'internal' | 'labels' | 'options' | 'createdAt'> & {
  endpoints: EndpointView[];
};

/** The API's endpoint shape. */
export type EndpointView = Pick<EndpointRecord, 'id' | 'name' | 'aliases' | 'network' | 'node' | 'address' | 'ip' | 'mac' | 'netns' | 'ifname' | 'cni'>;

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
  /** The network id (the pool's owner). */
  readonly id: string;
  readonly name: string;
  readonly pool: PoolInfo;
  /** Bare IP (default: the pool's gateway). */
  readonly gateway?: string;
  readonly internal: boolean;
  readonly labels: Record<string, string>;
  readonly options: Record<string, string>;
  /** A specific VXLAN id (default: the next free one). */
  readonly vni?: number;
  /** Release the pool too if the network cannot be written (true when the caller reserved it for this network only). */
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
    mac: e.mac,
    ...(e.netns !== undefined ? { netns: e.netns } : {}),
    ...(e.ifname !== undefined ? { ifname: e.ifname } : {}),
    ...(e.cni !== undefined ? { cni: e.cni } : {}),
  };
}

export function toNetworkView(n: NetworkRecord, endpoints: Iterable<EndpointRecord>): NetworkView {
  return {
    id: n.id,
    name: n.name,
    vni: n.vni,
    subnet: n.subnet,
    gateway: n.gateway,
    ...(n.ipRange ? { ipRange: n.ipRange } : {}),
    auxAddresses: n.auxAddresses ?? {},
    internal: n.internal,
    labels: n.labels ?? {},
    options: n.options ?? {},
    createdAt: n.createdAt,
    endpoints: [...endpoints].sort((a, b) => a.name.localeCompare(b.name)).map(toEndpointView),
  };
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

  listNetworks(): NetworkView[] {
    const view = this.ctx.cluster.view();
    return [...view.networks.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => toNetworkView(n, view.endpoints.get(n.id)?.values() ?? []));
  }

  inspectNetwork(ref: string): NetworkView {
    const n = this.findInView(ref);
    return toNetworkView(n, this.ctx.cluster.view().endpoints.get(n.id)?.values() ?? []);
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

  /** `kvnet network create` (and the local API): reserves a pool and a VNI, writes the network. */
  async createNetwork(input: CreateNetworkInput): Promise<NetworkView> {
    const { store, ipam } = this.ctx;
    if (await store.get(keys.netname(input.name))) throw new NameConflictError(`network with name ${input.name} already exists`);
    const options = input.options ?? {};
    let vni: number | undefined;
    if (options[VXLANID_OPTION] !== undefined) {
      const first = options[VXLANID_OPTION]!.split(',')[0]!.trim();
      if (!/^\d+$/.test(first)) throw new InvalidInputError(`invalid option ${VXLANID_OPTION} "${options[VXLANID_OPTION]}": is not a VXLAN id`);
      vni = Number(first);
    }
    if (input.gateway && !input.subnet) throw new InvalidInputError(`invalid gateway "${input.gateway}": a gateway needs --subnet`);
    if (input.ipRange && !input.subnet) throw new InvalidInputError(`invalid ipRange "${input.ipRange}": an ip range needs --subnet`);
    const nid = newId();
    const pool = await ipam.requestPool({
      owner: nid,
      ...(input.subnet ? { subnet: input.subnet } : {}),
      ...(input.gateway ? { gateway: input.gateway } : {}),
      ...(input.ipRange ? { ipRange: input.ipRange } : {}),
      ...(input.auxAddresses ? { auxAddresses: input.auxAddresses } : {}),
    });
    const record = await this.createNetworkForPool({ id: nid, name: input.name, pool, internal: input.internal ?? false, labels: input.labels ?? {}, options, ownsPool: true, ...(vni !== undefined ? { vni } : {}) });
    return toNetworkView(record, []);
  }

  /**
   * The one path that writes a new network, for every face: allocates the VNI, writes record and
   * name in one transaction, and on any failure releases the VNI (and the pool when `ownsPool`), so
   * nothing is left behind. Resolves once this agent's view shows the network.
   */
  async createNetworkForPool<T extends NetworkRecord = NetworkRecord>(spec: NetworkSpec): Promise<T> {
    const { ipam, logger, records, cluster } = this.ctx;
    const log = logger.child({ nid: spec.id, network: spec.name });
    let vni: number | undefined;
    let committed = false;
    try {
      vni = await ipam.allocateVni({ network: spec.id, ...(spec.vni !== undefined ? { requested: spec.vni } : {}) });
      const record = {
        id: spec.id,
        name: spec.name,
        vni,
        poolId: spec.pool.id,
        subnet: spec.pool.subnet,
        gateway: spec.gateway ?? spec.pool.gateway.split('/')[0]!,
        ...(spec.pool.ipRange ? { ipRange: spec.pool.ipRange } : {}),
        auxAddresses: spec.pool.auxAddresses ?? {},
        internal: spec.internal,
        labels: spec.labels,
        options: spec.options,
        createdAt: new Date().toISOString(),
        createdBy: this.ctx.node.name,
        ...spec.extra,
      } as T;
      if (!(await records.createNetwork(record))) throw new NameConflictError(`network with name ${spec.name} already exists`);
      committed = true;
      log.info({ vni, subnet: record.subnet }, 'network created');
      await cluster.waitForView(keys.network(spec.id), true);
      return record;
    } finally {
      if (!committed) {
        if (vni !== undefined) await ipam.releaseVni(vni, spec.id).catch((err) => log.warn({ err }, 'could not release the VNI of a failed create'));
        if (spec.ownsPool) await ipam.releasePool(spec.pool.id, spec.id).catch((err) => log.warn({ err }, 'could not release the pool of a failed create'));
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
    const { store, ipam, logger, records, node } = this.ctx;
    for (let attempt = 1; ; attempt++) {
      const { record: net, entry: netEntry } = await this.resolveNetwork(ref);
      if (net.deleting) throw new NetworkInUseError(`network ${net.name} is being removed`);
      const eid = newId();
      const name = input.name ?? eid.slice(0, 12);
      const ifname = this.chooseIfname(net, input);
      const log = logger.child({ nid: net.id, eid, network: net.name, endpoint: name });
      if (await store.get(keys.epname(net.id, name))) throw new NameConflictError(`endpoint with name ${name} already exists in network ${net.name}`);
      if (input.ip !== undefined) {
        const subnet = parseCidr(net.subnet);
        if (!subnet || !cidrContains(subnet, parseIpv4(input.ip)!)) {
          throw new InvalidInputError(`invalid ip "${input.ip}": is outside subnet ${net.subnet} of network ${net.name}`);
        }
      }
      const alloc = await ipam.allocateAddress(net.poolId, { owner: eid, ...(input.ip !== undefined ? { address: input.ip } : {}) });
      const aliases = [...new Set(input.aliases ?? [])].filter((a) => a !== name);
      const record = newEndpointRecord(node, { id: eid, name, ...(aliases.length ? { aliases } : {}), network: net.id, address: alloc.address, ip: alloc.ip, netns: input.netns, ifname, ...(opts.cni ? { cni: opts.cni } : {}) });
      let ok: boolean;
      try {
        ok = await records.createEndpoint(netEntry, record);
      } catch (err) {
        // The outcome is unknown: the endpoint may exist now. Keep the address rather than risk a duplicate.
        log.warn({ err, address: alloc.address }, 'connect failed with an unknown outcome; address kept');
        throw err;
      }
      if (!ok) {
        await records.releaseAddress(net.poolId, record);
        if (await store.get(keys.epname(net.id, name))) throw new NameConflictError(`endpoint with name ${name} already exists in network ${net.name}`);
        if (attempt >= CONNECT_MAX_ATTEMPTS) throw new NetworkInUseError(`network ${net.name} kept changing while connecting; try again`);
        continue;
      }
      log.info({ address: record.address, netns: record.netns }, 'endpoint created');
      const mine = await this.plumb(record, { network: false });
      if (mine) {
        log.warn({ err: mine }, 'endpoint could not be plumbed; removing it again');
        await records.deleteEndpoint(record, { poolId: net.poolId }).catch((err) => log.error({ err }, 'could not roll back the endpoint'));
        await this.ctx.reconciler.reconcileNow();
        throw mine.kind === 'invalid' || mine.code === 'KVNET_DATAPLANE_SANDBOX_NOT_FOUND' || mine.kind === 'conflict' ? new InvalidInputError(mine.message) : new PlumbingError(mine.message);
      }
      return toEndpointView(record);
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
        const eps = [...(cluster.view().endpoints.get(net.id)?.keys() ?? [])].filter((id) => id.startsWith(epRef));
        if (eps.length === 1) eid = eps[0];
      }
    }
    const entry = eid ? await store.get(keys.endpoint(net.id, eid)) : undefined;
    if (!entry) throw new NotFoundError(`no such endpoint: ${epRef} in network ${net.name}`);
    const ep = { ...decodeRecord<EndpointRecord>(entry.value, entry.key), id: eid!, network: net.id };
    if (!(await records.deleteEndpoint(ep, { revision: entry.revision, poolId: net.poolId }))) throw new NetworkInUseError(`endpoint ${ep.name} changed while being removed; try again`);
    logger.info({ nid: net.id, eid, network: net.name, endpoint: ep.name }, 'endpoint removed');
    await cluster.waitForView(entry.key, false);
    if (ep.node === node.name) await this.ctx.reconciler.reconcileNow();
  }
}

function encodeDeleting(record: NetworkRecord, deleting: boolean): Uint8Array {
  return encodeRecord({ ...record, deleting });
}
