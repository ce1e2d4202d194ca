/**
 * `kvnet node ls` and `kvnet node rm`: every node the cluster knows, with its state, and removing a
 * node that will not come back.
 *
 * | state | meaning |
 * |---|---|
 * | `alive` | its record is live (its agent renews its lease) |
 * | `unreachable` | its record is live, but the last VXLAN probe from this host (`kvnet doctor`) got no answer from any of its endpoints |
 * | `restarting` | no live record; its agent stopped cleanly and announced a restart: not reaped before `until` |
 * | `down` | no live record and no announced restart, but endpoints still in the store: reaped after the grace period (or at once by `node rm`) |
 *
 * {@link nodeStates} is pure; {@link NodeService} reads the restart markers and answers the API.
 */

import { allEndpoints, type ClusterView } from './cluster-view.ts';
import type { CoreContext } from './context.ts';
import { decodeRecord, RESTARTING, type EndpointRecord, type RestartMarker } from './layout.ts';
import { removeNode, type NodeRemoval } from './reaper.ts';
import { listEndpointRecords } from './records.ts';

export type NodeState = 'alive' | 'unreachable' | 'restarting' | 'down';

/** The last VXLAN probe of a node from this host (kept by the doctor face). */
export interface NodeProbe {
  readonly ok: boolean;
  /** When it ran (ISO 8601). */
  readonly at: string;
  /** What was probed and what happened, for people. */
  readonly detail: string;
}

/** One row of `kvnet node ls`. */
export interface NodeView {
  readonly name: string;
  /** Underlay address: from the live record, or the one recorded in its endpoints. */
  readonly advertise?: string;
  readonly state: NodeState;
  readonly version?: string;
  readonly startedAt?: string;
  /** Endpoints of the node in this agent's view. */
  readonly endpoints: number;
  /** This agent's own node. */
  readonly self: boolean;
  /** `restarting`: not reaped before this time (ISO 8601). */
  readonly until?: string;
  /** The last VXLAN probe from this host, when there was one. */
  readonly probe?: NodeProbe;
}

export interface NodeStatesInput {
  readonly view: ClusterView;
  /** This agent's node name. */
  readonly self: string;
  /** Restart markers: node → `until` (ms since epoch). */
  readonly restarting: ReadonlyMap<string, number>;
  readonly probes: ReadonlyMap<string, NodeProbe>;
  readonly now: number;
  /** Endpoints of networks the view holds without their endpoints (not followed), read from the store. */
  readonly moreEndpoints?: readonly EndpointRecord[];
}

/** Every node the view knows (live records and owners of endpoints), with its state; sorted by name. */
export function nodeStates(input: NodeStatesInput): NodeView[] {
  const { view, self, restarting, probes, now } = input;
  const counts = new Map<string, { n: number; vtep?: string }>();
  for (const e of [...allEndpoints(view), ...(input.moreEndpoints ?? [])]) {
    const c = counts.get(e.node) ?? { n: 0 };
    counts.set(e.node, { n: c.n + 1, vtep: c.vtep ?? e.vtep });
  }
  const names = new Set([...view.nodes.keys(), ...counts.keys(), ...[...restarting.entries()].filter(([, until]) => until > now).map(([n]) => n)]);
  return [...names].sort().map((name): NodeView => {
    const rec = view.nodes.get(name);
    const probe = probes.get(name);
    const until = restarting.get(name);
    let state: NodeState;
    if (rec) state = probe && !probe.ok && name !== self ? 'unreachable' : 'alive';
    else state = until !== undefined && until > now ? 'restarting' : 'down';
    const advertise = rec?.advertise ?? counts.get(name)?.vtep;
    return {
      name,
      ...(advertise ? { advertise } : {}),
      state,
      ...(rec ? { version: rec.version, startedAt: rec.startedAt } : {}),
      endpoints: counts.get(name)?.n ?? 0,
      self: name === self,
      ...(state === 'restarting' ? { until: new Date(until!).toISOString() } : {}),
      ...(probe ? { probe } : {}),
    };
  });
}

/** Node listing and removal for the local API. */
export class NodeService {
  constructor(
    private readonly ctx: CoreContext,
    /** The doctor's last VXLAN probe per node (empty when the doctor never ran). */
    private readonly probes: () => ReadonlyMap<string, NodeProbe> = () => new Map(),
  ) {}

  /** Every node with its state. Restart markers are read from the store; while it is down, without them. */
  async list(): Promise<NodeView[]> {
    const restarting = new Map<string, number>();
    try {
      for (const e of (await this.ctx.store.list(RESTARTING)).entries) {
        try {
          const m = decodeRecord<RestartMarker>(e.value, e.key);
          restarting.set(m.node, Date.parse(m.until) || 0);
        } catch {
          // an unreadable marker protects nobody
        }
      }
    } catch (err) {
      this.ctx.logger.debug({ err }, 'node ls without restart markers: the store did not answer');
    }
    // the endpoints of networks this host does not follow (endpoint-mirrors.ts) are counted from the store
    const moreEndpoints: EndpointRecord[] = [];
    for (const nid of this.ctx.cluster.unfollowedNetworks()) moreEndpoints.push(...(await listEndpointRecords(this.ctx.store, nid)));
    return nodeStates({ view: this.ctx.cluster.view(), self: this.ctx.node.name, restarting, probes: this.probes(), now: Date.now(), moreEndpoints });
  }

  /** `kvnet node rm NODE [--force]` (see {@link removeNode}); waits until this agent's view no longer lists the node's endpoints. */
  async remove(name: string, force: boolean): Promise<NodeRemoval> {
    const { store, ipam, logger, node, cluster } = this.ctx;
    const result = await removeNode({ store, ipam, logger: logger.child({ component: 'node-rm' }), self: node.name }, name, { force, networks: cluster.view().networks });
    await cluster.waitUntil((v) => !v.nodes.has(name) && !allEndpoints(v).some((e) => e.node === name));
    return result;
  }
}
