/**
 * CNI attachments: what the `kvnet` CNI plugin asks the local API for (`/v1/cni/…`). An attachment is an
 * ordinary kvnet endpoint of this host — made by {@link NetworkService.connect}, so it is listed by
 * `network inspect`, its name is unique across hosts, it is reaped with its host and gets a gateway
 * bridge interface unless the network is internal — whose record carries `cni: {containerId, ifname,
 * netconf}` (layout.ts), the key DEL, CHECK and GC find it again by.
 *
 * Every answer describes the attachment as the plugin needs it for a CNI result or a CHECK: the endpoint,
 * its network, its gateway bridge interface, and what the container's network namespace holds now.
 */

import type { Logger } from 'pino';
import type { AgentContext } from '../context.ts';
import { NameConflictError, NotFoundError } from '../errors.ts';
import type { CniAttachInput, CniAttachmentRefInput, CniGcInput } from '../api/schemas.ts';
import { EGRESS_IFNAME } from '../desired-state.ts';
import { endpointAddresses, type EndpointRecord } from '../layout.ts';
import { resolverAddressOf } from '../config.ts';
import { toEndpointView, type EndpointView } from '../network-service.ts';
import { applyHostRoutes } from './host-routes.ts';
import { readSandbox, type SandboxState } from './sandbox.ts';

/** The network of an attachment, as a CNI result needs it. */
export interface CniNetworkInfo {
  readonly id: string;
  readonly name: string;
  readonly subnet: string;
  /** Bare IP. */
  readonly gateway: string;
  readonly internal: boolean;
}

/** An attachment as `/v1/cni/attachments` answers it. */
export interface CniAttachmentView {
  readonly endpoint: EndpointView;
  readonly network: CniNetworkInfo;
  /** The container's gateway bridge interface; absent on internal networks and with `--gateway-bridge none`. */
  readonly egress?: { readonly ifname: string; readonly address: string; readonly gateway: string };
  /** What the container's network namespace holds now; absent when it is gone. */
  readonly sandbox?: SandboxState;
  /**
   * The resolver that answers kvnet names (the names face's address, reached over this interface: the
   * agent routes it in the sandbox); absent when names are off and on IPv6-only networks. The plugin puts it in the result's `dns`
   * unless the network configuration gives its own.
   */
  readonly dns?: { readonly nameservers: readonly string[] };
}

/** What `POST /v1/cni/gc` answers. */
export interface CniGcResult {
  /** Names of the endpoints removed. */
  readonly removed: string[];
}

export class CniAttachments {
  private readonly logger: Logger;

  constructor(private readonly ctx: AgentContext) {
    this.logger = ctx.logger.child({ component: 'cni' });
  }

  /**
   * CNI ADD: a new endpoint for (network, containerId, ifname) in `netns`. An attachment that already
   * exists in the same netns is answered as it is (`created: false`: an ADD retried after its answer
   * was lost); one in another netns is a conflict — the runtime must DEL it first.
   */
  async attach(input: CniAttachInput): Promise<{ created: boolean; attachment: CniAttachmentView }> {
    const existing = this.lookup(input);
    if (existing) {
      if (existing.netns === input.netns) return { created: false, attachment: await this.describeRecord(existing) };
      throw new NameConflictError(
        `container ${input.containerId} already has interface ${input.ifname} on network ${this.networkName(existing.network)} (endpoint ${existing.name}, netns ${existing.netns ?? '-'}); it must be deleted (CNI DEL) before it is added again`,
      );
    }
    const view = await this.ctx.networks.connect(
      input.network,
      { netns: input.netns, ifname: input.ifname, ...(input.name !== undefined ? { name: input.name } : {}), ...(input.ip !== undefined ? { ip: input.ip } : {}) },
      { cni: { containerId: input.containerId, ifname: input.ifname, netconf: input.netconf } },
    );
    const record = this.ctx.cluster.view().endpoints.get(view.network)?.get(view.id);
    if (!record) throw new NotFoundError(`endpoint ${view.name} of network ${input.network} vanished right after it was made`);
    // The route portmap needs (host-routes.ts), written while the sandbox is read; the face repairs it if this fails.
    const egress = this.ctx.config.gatewayBridge !== 'none' && !this.isInternal(record) ? this.ctx.reconciler.egressOf(record.id) : undefined;
    const [attachment, failed] = await Promise.all([
      this.describeRecord(record),
      egress ? applyHostRoutes(this.ctx.config.gatewayBridge, [{ dst: `${record.ip}/32`, via: egress.address.split('/')[0]! }], []) : [],
    ]);
    if (failed.length > 0) this.logger.warn({ eid: record.id, failed }, 'could not add the host route of a CNI endpoint; retrying later');
    this.logger.info({ eid: record.id, endpoint: record.name, containerId: input.containerId, ifname: input.ifname, netconf: input.netconf }, 'CNI attachment added');
    return { created: true, attachment };
  }

  /** CNI CHECK (and any lookup): the attachment, or NotFoundError naming it. */
  async describe(ref: CniAttachmentRefInput): Promise<CniAttachmentView> {
    return this.describeRecord(this.find(ref));
  }

  /** CNI DEL: removes the attachment's endpoint (address released, interfaces and peers removed); NotFoundError when there is none. */
  async detach(ref: CniAttachmentRefInput): Promise<void> {
    const record = this.find(ref);
    const egress = this.ctx.reconciler.egressOf(record.id);
    await this.ctx.networks.disconnect(record.network, record.id);
    if (egress && this.ctx.config.gatewayBridge !== 'none') {
      await applyHostRoutes(this.ctx.config.gatewayBridge, [], [{ dst: `${record.ip}/32`, via: egress.address.split('/')[0]! }]);
    }
    this.logger.info({ eid: record.id, endpoint: record.name, containerId: ref.containerId, ifname: ref.ifname }, 'CNI attachment deleted');
  }

  /**
   * CNI GC: removes every attachment of configuration `netconf` on `network` on this host that `valid`
   * does not list. Keeps going past a failure and then throws the first one, naming how many failed.
   */
  async gc(input: CniGcInput): Promise<CniGcResult> {
    let nid: string;
    try {
      nid = this.ctx.networks.findNetwork(input.network).id;
    } catch (err) {
      if (err instanceof NotFoundError) return { removed: [] }; // no network, no attachments
      throw err;
    }
    const valid = new Set(input.valid.map((v) => `${v.containerId}\u0000${v.ifname}`));
    const stale = this.local()
      .filter((e) => e.network === nid && e.cni!.netconf === input.netconf)
      .filter((e) => !valid.has(`${e.cni!.containerId}\u0000${e.cni!.ifname}`));
    const removed: string[] = [];
    const failures: unknown[] = [];
    for (const e of stale) {
      try {
        await this.detach({ network: nid, containerId: e.cni!.containerId, ifname: e.cni!.ifname });
        removed.push(e.name);
      } catch (err) {
        if (err instanceof NotFoundError) continue; // removed meanwhile
        failures.push(err);
      }
    }
    if (removed.length > 0) this.logger.info({ network: input.network, netconf: input.netconf, removed }, 'CNI GC removed stale attachments');
    if (failures.length > 0) {
      const first = failures[0] as Error;
      first.message = `CNI GC of ${input.netconf} on network ${input.network}: ${failures.length} of ${stale.length} stale attachments could not be removed; first: ${first.message}`;
      throw first;
    }
    return { removed };
  }

  // ---- helpers ----

  /** This host's CNI endpoints, from the agent's view. */
  private local(): EndpointRecord[] {
    const out: EndpointRecord[] = [];
    for (const eps of this.ctx.cluster.view().endpoints.values()) for (const e of eps.values()) if (e.node === this.ctx.node.name && e.cni) out.push(e);
    return out;
  }

  private lookup(ref: CniAttachmentRefInput): EndpointRecord | undefined {
    const nid = this.ctx.networks.findNetwork(ref.network).id; // NotFoundError names the network
    return this.local().find((e) => e.network === nid && e.cni!.containerId === ref.containerId && e.cni!.ifname === ref.ifname);
  }

  private find(ref: CniAttachmentRefInput): EndpointRecord {
    const record = this.lookup(ref);
    if (!record) throw new NotFoundError(`no CNI attachment of container ${ref.containerId} (interface ${ref.ifname}) on network ${ref.network} on node ${this.ctx.node.name}`);
    return record;
  }

  private isInternal(record: EndpointRecord): boolean {
    return this.ctx.cluster.view().networks.get(record.network)?.internal ?? true;
  }

  private networkName(nid: string): string {
    return this.ctx.cluster.view().networks.get(nid)?.name ?? nid.slice(0, 12);
  }

  private async describeRecord(record: EndpointRecord): Promise<CniAttachmentView> {
    const net = this.ctx.cluster.view().networks.get(record.network);
    if (!net) throw new NotFoundError(`network ${record.network.slice(0, 12)} of endpoint ${record.name} is gone`);
    const egress = net.internal ? undefined : this.ctx.reconciler.egressOf(record.id);
    const sandbox = record.netns ? await readSandbox(record.netns) : undefined;
    // The resolver listens on IPv4 only: an endpoint of an IPv6-only network has no address to ask from.
    const resolver = endpointAddresses(record).v4 ? resolverAddressOf(this.ctx.config) : undefined;
    return {
      endpoint: toEndpointView(record),
      network: { id: net.id, name: net.name, subnet: net.subnet, gateway: net.gateway, internal: net.internal },
      ...(egress ? { egress: { ifname: EGRESS_IFNAME, address: egress.address, gateway: egress.gateway } } : {}),
      ...(sandbox ? { sandbox } : {}),
      ...(resolver ? { dns: { nameservers: [resolver] } } : {}),
    };
  }
}
