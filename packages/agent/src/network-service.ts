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
import type { Logger } from 'pino';
import type { Ipam } from '@kvnet/ipam';
import { macFromIpv4, type DataplaneError } from '@kvnet/dataplane';
import type { KVEntry, KVStore, TxnOp } from '@kvnet/store';
import type { ConnectInput, CreateNetworkInput } from './api-schemas.ts';
import { allEndpoints, type ClusterView } from './cluster-view.ts';
import { InvalidInputError, NameConflictError, NetworkInUseError, NotFoundError, PlumbingError } from './errors.ts';
import { cidrContains, parseCidr, parseIpv4 } from './ipv4.ts';
import {
  decodeRecord,
  decodeText,
  encodeRecord,
  encodeText,
  ID_PATTERN,
  keys,
  newId,
  type EndpointRecord,
  type NetworkRecord,
} from './layout.ts';
import { DEFAULT_IFNAME } from './desired-state.ts';
import { defaultIfname } from './egress.ts';

/** Connect retries when the network record changed under it (e.g. an aborted `rm`). */
export const CONNECT_MAX_ATTEMPTS = 3;
/** How long a write waits for this agent's own view to show it before answering anyway. */
export const VIEW_CATCHUP_TIMEOUT_MS = 5_000;
const NSFS_MAGIC = 0x6e736673;
/** Docker's option naming a VXLAN id for the network. */
export const VXLANID_OPTION = 'com.docker.network.driver.overlay.vxlanid_list';

/** The API's network shape. */
export interface NetworkView {
  id: string;
  name: string;
  vni: number;
  subnet: string;
  gateway: string;
  ipRange?: string;
  auxAddresses: Record<string, string>;
  internal: boolean;
  labels: Record<string, string>;
  options: Record<string, string>;
  createdAt: string;
  endpoints: EndpointView[];
}

export interface EndpointView {
  id: string;
  name: string;
  network: string;
  node: string;
  address: string;
  ip: string;
  mac: string;
  netns?: string;
  ifname?: string;
}

export interface NetworkServiceDeps {
  readonly store: KVStore;
  readonly ipam: Ipam;
  readonly logger: Logger;
  readonly node: string;
  readonly nodeId: string;
  /** This node's advertise address (recorded in its endpoints). */
  readonly vtep: string;
  /** The agent's current view. */
  readonly view: () => ClusterView;
  /** Resolves when this agent's view shows `key` present (or absent); never rejects. */
  readonly waitForView: (key: string, present: boolean, timeoutMs: number) => Promise<boolean>;
  /** Runs a reconcile that starts after this call; resolves with the data plane errors of that run. */
  readonly reconcileNow: () => Promise<readonly DataplaneError[]>;
  /** Name of the gateway bridge interface in sandboxes; undefined without a gateway bridge. */
  readonly egressIfname: string | undefined;
}

export function toEndpointView(e: EndpointRecord): EndpointView {
  return {
    id: e.id,
    name: e.name,
    network: e.network,
    node: e.node,
    address: e.address,
    ip: e.ip,
    mac: e.mac,
    ...(e.netns !== undefined ? { netns: e.netns } : {}),
    ...(e.ifname !== undefined ? { ifname: e.ifname } : {}),
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
  constructor(private readonly deps: NetworkServiceDeps) {}

  // ---- reads (from the agent's view) ----

  listNetworks(): NetworkView[] {
    const view = this.deps.view();
    return [...view.networks.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => toNetworkView(n, view.endpoints.get(n.id)?.values() ?? []));
  }

  inspectNetwork(ref: string): NetworkView {
    const view = this.deps.view();
    const n = this.findInView(ref);
    return toNetworkView(n, view.endpoints.get(n.id)?.values() ?? []);
  }

  private findInView(ref: string): NetworkRecord {
    const view = this.deps.view();
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
  private async resolveNetwork(ref: string): Promise<{ record: NetworkRecord; entry: KVEntry }> {
    const { store } = this.deps;
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
        const matches = [...this.deps.view().networks.keys()].filter((id) => id.startsWith(ref));
        if (matches.length === 1) nid = matches[0];
      }
    }
    const entry = nid ? await store.get(keys.network(nid)) : undefined;
    if (!entry) throw new NotFoundError(`no such network: ${ref}`);
    return { record: decodeRecord<NetworkRecord>(entry.value, entry.key), entry };
  }

  async createNetwork(input: CreateNetworkInput): Promise<NetworkView> {
    const { store, ipam, logger } = this.deps;
    if (await store.get(keys.netname(input.name))) throw new NameConflictError(`network with name ${input.name} already exists`);
    const options = input.options ?? {};
    let requestedVni: number | undefined;
    if (options[VXLANID_OPTION] !== undefined) {
      const first = options[VXLANID_OPTION]!.split(',')[0]!.trim();
      if (!/^\d+$/.test(first)) throw new InvalidInputError(`invalid option ${VXLANID_OPTION} "${options[VXLANID_OPTION]}": is not a VXLAN id`);
      requestedVni = Number(first);
    }
    if (input.gateway && !input.subnet) throw new InvalidInputError(`invalid gateway "${input.gateway}": a gateway needs --subnet`);
    if (input.ipRange && !input.subnet) throw new InvalidInputError(`invalid ipRange "${input.ipRange}": an ip range needs --subnet`);
    const nid = newId();
    const log = logger.child({ nid, network: input.name });
    const pool = await ipam.requestPool({
      owner: nid,
      ...(input.subnet ? { subnet: input.subnet } : {}),
      ...(input.gateway ? { gateway: input.gateway } : {}),
      ...(input.ipRange ? { ipRange: input.ipRange } : {}),
      ...(input.auxAddresses ? { auxAddresses: input.auxAddresses } : {}),
    });
    let vni: number | undefined;
    let committed = false;
    try {
      vni = await ipam.allocateVni({ network: nid, ...(requestedVni !== undefined ? { requested: requestedVni } : {}) });
      const record: NetworkRecord = {
        id: nid,
        name: input.name,
        vni,
        poolId: pool.id,
        subnet: pool.subnet,
        gateway: pool.gateway.split('/')[0]!,
        ...(pool.ipRange ? { ipRange: pool.ipRange } : {}),
        auxAddresses: pool.auxAddresses ?? {},
        internal: input.internal ?? false,
        labels: input.labels ?? {},
        options,
        createdAt: new Date().toISOString(),
        createdBy: this.deps.node,
      };
      const r = await store.txn([
        { op: 'put', key: keys.netname(input.name), value: encodeText(nid), if: { absent: true } },
        { op: 'put', key: keys.network(nid), value: encodeRecord(record), if: { absent: true } },
      ]);
      if (!r.ok) throw new NameConflictError(`network with name ${input.name} already exists`);
      committed = true;
      log.info({ vni, subnet: record.subnet }, 'network created');
      await this.deps.waitForView(keys.network(nid), true, VIEW_CATCHUP_TIMEOUT_MS);
      return toNetworkView(record, []);
    } finally {
      if (!committed) {
        if (vni !== undefined) await ipam.releaseVni(vni, nid).catch((err) => log.warn({ err }, 'could not release the VNI of a failed create'));
        await ipam.releasePool(pool.id, nid).catch((err) => log.warn({ err }, 'could not release the pool of a failed create'));
      }
    }
  }

  async deleteNetwork(ref: string): Promise<void> {
    const { store, ipam, logger } = this.deps;
    const { record, entry } = await this.resolveNetwork(ref);
    const log = logger.child({ nid: record.id, network: record.name });
    await this.refuseIfEndpoints(record);
    const marked = await store.putIf(entry.key, encodeRecord({ ...record, deleting: true }), { revision: entry.revision });
    if (!marked.ok) throw new NetworkInUseError(`network ${record.name} changed while being removed; try again`);
    try {
      await this.refuseIfEndpoints(record);
    } catch (err) {
      await store.putIf(entry.key, encodeRecord({ ...record, deleting: false }), { revision: marked.revision }).catch(() => undefined);
      throw err;
    }
    const ops: TxnOp[] = [{ op: 'delete', key: entry.key, if: { revision: marked.revision } }];
    const nameEntry = await store.get(keys.netname(record.name));
    if (nameEntry && decodeText(nameEntry.value) === record.id) ops.push({ op: 'delete', key: nameEntry.key, if: { revision: nameEntry.revision } });
    const r = await store.txn(ops);
    if (!r.ok) throw new NetworkInUseError(`network ${record.name} changed while being removed; try again`);
    log.info('network removed');
    await ipam.releaseVni(record.vni, record.id).catch((err) => log.warn({ err }, 'could not release the VNI of a removed network'));
    await ipam.releasePool(record.poolId, record.id).catch((err) => log.warn({ err }, 'could not release the pool of a removed network'));
    await this.deps.waitForView(entry.key, false, VIEW_CATCHUP_TIMEOUT_MS);
  }

  private async refuseIfEndpoints(record: NetworkRecord): Promise<void> {
    const listing = await this.deps.store.list(keys.endpointsOf(record.id));
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

  async connect(ref: string, input: ConnectInput): Promise<EndpointView> {
    checkNetnsPath(input.netns);
    const { store, ipam, logger } = this.deps;
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
      const record: EndpointRecord = {
        id: eid,
        name,
        network: net.id,
        node: this.deps.node,
        nodeId: this.deps.nodeId,
        address: alloc.address,
        ip: alloc.ip,
        mac: macFromIpv4(parseIpv4(alloc.ip)!),
        netns: input.netns,
        ifname,
        vtep: this.deps.vtep,
        createdAt: new Date().toISOString(),
      };
      const epKey = keys.endpoint(net.id, eid);
      let r;
      try {
        r = await store.txn([
          { op: 'check', key: netEntry.key, if: { revision: netEntry.revision } },
          { op: 'put', key: keys.epname(net.id, name), value: encodeText(eid), if: { absent: true } },
          { op: 'put', key: epKey, value: encodeRecord(record), if: { absent: true } },
        ]);
      } catch (err) {
        // The outcome is unknown: the endpoint may exist now. Keep the address rather than risk a duplicate.
        log.warn({ err, address: alloc.address }, 'connect failed with an unknown outcome; address kept');
        throw err;
      }
      if (!r.ok) {
        await ipam.releaseAddress(net.poolId, alloc.address, eid).catch((err) => log.warn({ err }, 'could not release an address after a failed connect'));
        if (await store.get(keys.epname(net.id, name))) throw new NameConflictError(`endpoint with name ${name} already exists in network ${net.name}`);
        if (attempt >= CONNECT_MAX_ATTEMPTS) throw new NetworkInUseError(`network ${net.name} kept changing while connecting; try again`);
        continue;
      }
      log.info({ address: record.address, netns: record.netns }, 'endpoint created');
      await this.deps.waitForView(epKey, true, VIEW_CATCHUP_TIMEOUT_MS);
      const errors = await this.deps.reconcileNow();
      const mine = errors.filter((e) => e.object.endpoint === eid);
      if (mine.length > 0) {
        log.warn({ err: mine[0] }, 'endpoint could not be plumbed; removing it again');
        await this.removeEndpoint(net, record).catch((err) => log.error({ err }, 'could not roll back the endpoint'));
        await this.deps.reconcileNow();
        const first = mine[0]!;
        const err = first.kind === 'invalid' || first.code === 'KVNET_DATAPLANE_SANDBOX_NOT_FOUND' || first.kind === 'conflict'
          ? new InvalidInputError(first.message)
          : new PlumbingError(first.message);
        throw err;
      }
      return toEndpointView(record);
    }
  }

  /**
   * The interface name inside the sandbox: as asked, or the first free ethN. Refuses a name another
   * endpoint of this host already uses in the same sandbox, and the gateway bridge interface's name
   * when the sandbox has (or will have) one.
   */
  private chooseIfname(net: NetworkRecord, input: ConnectInput): string {
    const view = this.deps.view();
    const same = allEndpoints(view).filter((e) => e.node === this.deps.node && e.netns === input.netns);
    const taken = new Map(same.map((e) => [e.ifname ?? DEFAULT_IFNAME, e]));
    const egress = this.deps.egressIfname;
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
    const { store } = this.deps;
    const { record: net } = await this.resolveNetwork(netRef);
    let eid: string | undefined;
    if (ID_PATTERN.test(epRef)) eid = epRef;
    else {
      const byName = await store.get(keys.epname(net.id, epRef)).catch(() => undefined);
      if (byName) eid = decodeText(byName.value);
      else if (/^[0-9a-f]{1,63}$/.test(epRef)) {
        const eps = [...(this.deps.view().endpoints.get(net.id)?.keys() ?? [])].filter((id) => id.startsWith(epRef));
        if (eps.length === 1) eid = eps[0];
      }
    }
    const entry = eid ? await store.get(keys.endpoint(net.id, eid)) : undefined;
    if (!entry) throw new NotFoundError(`no such endpoint: ${epRef} in network ${net.name}`);
    const ep = decodeRecord<EndpointRecord>(entry.value, entry.key);
    await this.removeEndpoint(net, { ...ep, id: eid!, network: net.id }, entry.revision);
    this.deps.logger.info({ nid: net.id, eid, network: net.name, endpoint: ep.name }, 'endpoint removed');
    await this.deps.waitForView(entry.key, false, VIEW_CATCHUP_TIMEOUT_MS);
    if (ep.node === this.deps.node) await this.deps.reconcileNow();
  }

  /** Deletes an endpoint's records (and name key) and releases its address. */
  private async removeEndpoint(net: NetworkRecord, ep: EndpointRecord, revision?: string): Promise<void> {
    const { store, ipam } = this.deps;
    const key = keys.endpoint(net.id, ep.id);
    const ops: TxnOp[] = [{ op: 'delete', key, ...(revision ? { if: { revision } } : {}) }];
    const nameEntry = await store.get(keys.epname(net.id, ep.name));
    if (nameEntry && decodeText(nameEntry.value) === ep.id) ops.push({ op: 'delete', key: nameEntry.key, if: { revision: nameEntry.revision } });
    const r = await store.txn(ops);
    if (!r.ok) throw new NetworkInUseError(`endpoint ${ep.name} changed while being removed; try again`);
    await ipam.releaseAddress(net.poolId, ep.address, ep.id).catch((err) => this.deps.logger.warn({ err, eid: ep.id }, 'could not release the address of a removed endpoint'));
  }
}
