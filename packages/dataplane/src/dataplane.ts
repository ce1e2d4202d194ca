/**
 * The data plane contract: what the agent wants (desired state), what the kernel holds (actual state),
 * the changes between them (plan), and the {@link Dataplane} class that applies them. Desired, actual
 * and plan are plain data, so the planner is tested without a kernel.
 */

import { pino, type Logger } from 'pino';
import { resolveConfig, type ResolvedConfig } from './config.ts';
import {
  InvalidConfigError,
  isDataplaneError,
  KernelRefusedError,
  TeardownIncompleteError,
  type DataplaneError,
  type DataplaneObject,
} from './errors.ts';
import { BatchSessions } from './batch-session.ts';
import { resolveDesiredState, type ResolvedDesiredState } from './desired-state.ts';
import { executePlan, type ExecutionResult } from './executor.ts';
import { ensureGatewayBridge } from './gateway-bridge.ts';
import { raiseNeighbourThresholds } from './host-tuning.ts';
import { iptablesRemovalInput, iptablesRestore } from './iptables.ts';
import { runBatch } from './iproute2.ts';
import { probeSandboxes, readActualState } from './kernel-state.ts';
import { iptablesChains } from './names.ts';
import { commitPeerDelta, planPeerDelta, programmedNetworkOf, type ProgrammedNetwork } from './peer-delta.ts';
import { planChanges, planResolved } from './plan.ts';
import { readUnderlay, type UnderlayInfo } from './underlay.ts';

/** vxlan0's entries per network as `programmed` records them, in the shape a kernel read gives. */
function knownPeers(programmed: ReadonlyMap<string, ProgrammedNetwork>): Map<string, Pick<ActualNetwork, 'neighbours' | 'fdb'>> {
  return new Map(
    [...programmed].map(([id, p]) => [
      id,
      { neighbours: [...p.neighbours].map(([ip, mac]) => ({ ip, mac, permanent: true })), fdb: [...p.fdb].map(([mac, dst]) => ({ mac, dst })) },
    ]),
  );
}

/** Read → plan → execute rounds of one `apply` (the first plus re-plans after failed lines). */
export const APPLY_MAX_ROUNDS = 3;
/** Errors logged one by one per apply (all are in the report). */
const LOGGED_ERRORS_PER_APPLY = 10;

/** Configuration of one {@link Dataplane} instance (one per host; several per machine in tests). */
export interface DataplaneConfig {
  /**
   * Short `[a-z0-9]` prefix (≤ 6 chars) of every kernel object this instance creates: overlay netns
   * names, host-side link names, iptables chains. Several agents on one machine (simulated hosts) use
   * different prefixes; the same agent keeps its prefix across restarts so it finds its own objects again.
   */
  readonly namePrefix: string;
  /**
   * The host's network namespace: a name under /run/netns or an absolute path; undefined = this
   * process's own. The VXLAN sockets, the gateway bridge, egress links, iptables rules and sysctls live
   * there. Tests drive several simulated hosts from one process with this.
   */
  readonly hostNetns?: string;
  /**
   * Local underlay address, IPv4 or IPv6: the VXLAN source address, and what peers use as this host's
   * VTEP. Every peer's VTEP must be of the same family (a VXLAN device sends over one family).
   */
  readonly vtep: string;
  /**
   * VXLAN UDP port; default 4789. Must be the same on every host of the cluster: a host on another port
   * sends to a port nobody listens on. The agent checks it against the cluster's recorded port.
   */
  readonly vxlanPort?: number;
  /**
   * MTU of the underlay interface (see {@link readUnderlay}); default 1500. Overlay interfaces get this
   * − 50 (IPv4 VTEP) or − 70 (IPv6 VTEP) unless a network sets its own MTU, and a network MTU above that
   * is reported in {@link ApplyReport.warnings}.
   */
  readonly underlayMtu?: number;
  /**
   * The gateway bridge that gives non-internal containers a way out (Docker's docker_gwbridge), or
   * `false` when something else provides egress (Docker mode: dockerd attaches its own docker_gwbridge).
   */
  readonly gatewayBridge?: GatewayBridgeConfig | false;
  /** Parent logger; the data plane logs through a child with `component: 'dataplane'`. Silent when absent. */
  readonly logger?: Logger;
}

/** Where the gateway bridge lives and which subnets it may take. */
export interface GatewayBridgeConfig {
  /** Bridge name in the host namespace; default `docker_gwbridge`. */
  readonly name?: string;
  /**
   * First candidate subnet; default `172.18.0.0/16`. The bridge gets the first block of this size, from
   * here upward to the end of the private range it lies in, that overlaps no route of the host.
   */
  readonly pool?: string;
  /**
   * IPv6 egress: a /64 on the bridge (from {@link pool6}), ip6tables masquerade for it, IPv6 forwarding
   * in the host namespace. `'auto'`: only when the host namespace has a global IPv6 address on some
   * interface (the host has IPv6 to give) — what the agent passes once it hands out IPv6 egress
   * addresses; `true`: always; `false` (default): never, so a caller that gives endpoints no
   * `egress.addressIPv6` changes nothing IPv6 on the host.
   */
  readonly ipv6?: 'auto' | boolean;
  /**
   * First candidate IPv6 subnet (a /64); default `fd6b:766e:6777::/64` (a ULA). The bridge takes the first
   * /64 from here to the end of its /48 that overlaps no IPv6 route of the host.
   */
  readonly pool6?: string;
}

/** Everything the host should have: only networks with at least one local endpoint. */
export interface DesiredState {
  /** Networks with at least one endpoint on this host; any other overlay namespace of the prefix is removed. */
  readonly networks: readonly DesiredNetwork[];
}

/** One overlay network as this host needs it. */
export interface DesiredNetwork {
  /** Network id (Docker's are 64 hex digits); lowercase letters and digits, ≤ 64 chars. */
  readonly id: string;
  /** VXLAN network identifier, 256…16777215. */
  readonly vni: number;
  /**
   * IPv4 and/or IPv6 subnets (IPv4 /30 or larger, IPv6 /126 or larger); the bridge gets every gateway,
   * e.g. 10.0.1.1/24 and fd00:1::1/64. All subnets share one L2 segment. Only IPv6 subnets: an IPv6-only
   * network.
   */
  readonly subnets: readonly { readonly cidr: string; readonly gateway: string }[];
  /** Internal networks get no egress: no gateway bridge interface, no default route. */
  readonly internal: boolean;
  /**
   * MTU of every overlay interface of the network (vxlan0, br0, both veth ends); the same on every host.
   * Default: this host's underlay MTU − 50 (− 70 for an IPv6 VTEP). At least 68, or 1280 when the network
   * has an IPv6 subnet (refused otherwise); one above what this host's underlay carries is applied and
   * reported in {@link ApplyReport.warnings}.
   */
  readonly mtu?: number;
  /** The endpoints on this host. */
  readonly endpoints: readonly DesiredEndpoint[];
  /** The endpoints on other hosts. */
  readonly peers: readonly DesiredPeer[];
}

/** A container on this host attached to the network. */
export interface DesiredEndpoint {
  /** Endpoint id; lowercase letters and digits, ≤ 64 chars; the first 12 must be unique in the network. */
  readonly id: string;
  /** IPv4 address with the prefix length of its subnet, e.g. 10.0.1.2/24. At least one of the two addresses. */
  readonly address?: string;
  /** IPv6 address with the prefix length of its subnet, e.g. fd00:1::2/64 (set without duplicate address detection). */
  readonly addressIPv6?: string;
  /**
   * Default: `02:42:` + the IPv4 bytes when the endpoint has an IPv4 address (dual stack included), else
   * `06:` + five bytes of SHA-256 of the IPv6 address (`endpointMac` of `@kvnet/netaddr`).
   */
  readonly mac?: string;
  /** Standalone mode: the container side is moved into this netns path and named `ifname`. */
  readonly sandbox?: DesiredSandbox;
  /** Docker mode: the container side stays in the host netns under this name (Docker moves it itself). */
  readonly handoff?: { readonly hostIfname: string };
}

/** Where the container side of an endpoint goes in standalone mode. */
export interface DesiredSandbox {
  /** Absolute path of the container's network namespace (a bind mount or /proc/<pid>/ns/net). */
  readonly path: string;
  /** Interface name inside the container, e.g. `eth0`. */
  readonly ifname: string;
  /**
   * A second interface on the gateway bridge carrying the default route (non-internal networks only).
   * `address` is a CIDR inside the bridge's subnet, e.g. 172.18.0.2/16, allocated by the agent;
   * `addressIPv6` (optional) one inside the bridge's IPv6 subnet (`GatewayBridgeInfo.subnet6`), which adds
   * the IPv6 default route.
   */
  readonly egress?: { readonly ifname: string; readonly address: string; readonly addressIPv6?: string };
}

/**
 * A remote endpoint: becomes one neighbour entry per address (ip → mac: ARP for IPv4, NDP for IPv6,
 * both answered by vxlan0's proxy) and one FDB entry (mac → vtep).
 */
export interface DesiredPeer {
  /** The remote endpoint's IPv4 address (no prefix length). At least one of `ip` and `ipv6`. */
  readonly ip?: string;
  /** The remote endpoint's IPv6 address (no prefix length). */
  readonly ipv6?: string;
  /** The remote endpoint's MAC. */
  readonly mac: string;
  /** The remote host's VTEP (underlay address, the same family as this host's). */
  readonly vtep: string;
}

/**
 * A change of one network's peers since the last apply (see {@link Dataplane.applyPeers}): peers that
 * went and peers that came; a peer that moved to another VTEP is in both, with its old and new values.
 */
export interface PeerDelta {
  /** Network id. */
  readonly network: string;
  /** Peers as they were given before (same fields and values). */
  readonly remove: readonly DesiredPeer[];
  readonly add: readonly DesiredPeer[];
}

/** Where a command runs: this process's netns, a name under /run/netns, or a netns file path. */
export type NetnsTarget =
  | { readonly kind: 'self' }
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'path'; readonly path: string };

/** One interface as read back from the kernel. */
export interface ActualLink {
  /** Interface name in its namespace. */
  readonly name: string;
  /** ifindex in its namespace. */
  readonly index: number;
  /** `bridge`, `vxlan`, `veth`, …; undefined for devices without a kind (lo, physical). */
  readonly kind?: string;
  readonly mtu: number;
  /** Link-layer address. */
  readonly mac: string;
  /** Administratively up. */
  readonly up: boolean;
  /** The bridge it is a port of. */
  readonly master?: string;
  /** ifalias; carries the data plane's completion marker on links it made. */
  readonly alias?: string;
  /** IPv4 and IPv6 addresses as CIDRs, e.g. 10.0.1.1/24, fd00:1::1/64; link-local (fe80::/10) ones left out. */
  readonly addresses: readonly string[];
  /** VXLAN attributes (vxlan devices only); `local` is the source VTEP (IPv4 or IPv6). */
  readonly vxlan?: {
    readonly vni: number;
    readonly port: number;
    readonly local?: string;
    readonly learning: boolean;
    readonly proxy: boolean;
  };
  /** Bridge port isolation (set on gateway bridge ports: no traffic between isolated ports). */
  readonly isolated?: boolean;
  /** For veths: the peer's ifindex and the netnsid it lives in (as seen from this namespace). */
  readonly peer?: { readonly index: number; readonly netnsId?: number };
}

/** A neighbour entry on the VXLAN device (ARP or NDP; link-local IPv6 entries are not read). */
export interface ActualNeighbour {
  /** IPv4 or IPv6 address, canonical. */
  readonly ip: string;
  readonly mac: string;
  /** NUD_PERMANENT (what the data plane programs); anything else is replaced or removed. */
  readonly permanent: boolean;
}

/** A forwarding entry of the VXLAN device itself (`self`, with a remote VTEP). */
export interface ActualFdbEntry {
  readonly mac: string;
  /** The remote VTEP the MAC is sent to. */
  readonly dst: string;
}

/** One overlay namespace of this prefix as read back. */
export interface ActualNetwork {
  /** Network id, from the namespace name. */
  readonly id: string;
  /** Overlay namespace name under /run/netns. */
  readonly netns: string;
  /** Set when the namespace could not be read (stale mount, …); it will be recreated or removed. */
  readonly readError?: string;
  /** Every link in the overlay namespace (lo, br0, vxlan0, endpoint veths). */
  readonly links: readonly ActualLink[];
  /** Neighbour entries on vxlan0. */
  readonly neighbours: readonly ActualNeighbour[];
  /** `self` FDB entries with a remote of vxlan0. */
  readonly fdb: readonly ActualFdbEntry[];
}

/** The gateway bridge as read back. */
export interface ActualGatewayBridge {
  /** Bridge name in the host namespace. */
  readonly name: string;
  /** Subnet and gateway from the bridge's first IPv4 address; undefined when it has none. */
  readonly subnet?: string;
  /** The bridge's own address (the containers' default gateway). */
  readonly gateway?: string;
  /** Subnet and gateway from the bridge's first IPv6 address (IPv6 egress); undefined without one. */
  readonly subnet6?: string;
  readonly gateway6?: string;
  readonly up: boolean;
  readonly mtu: number;
  /** Whether this prefix created it (its alias carries our marker). */
  readonly owned: boolean;
}

/** The host namespace's objects of this prefix. */
export interface ActualHost {
  /** The host namespace as configured ("(own)" for this process's). */
  readonly netns: string;
  /** Host links this prefix owns or may own: egress veths `<prefix>-g…`. */
  readonly links: readonly ActualLink[];
  /** The configured gateway bridge, if it exists. */
  readonly gatewayBridge?: ActualGatewayBridge;
  /** Our iptables rules in `iptables -S` form per table (our chains and the jumps to them); read on request. */
  readonly iptables?: { readonly filter: readonly string[]; readonly nat: readonly string[] };
  /** The same for ip6tables (IPv6 egress); read with `iptables`. */
  readonly ip6tables?: { readonly filter: readonly string[]; readonly nat: readonly string[] };
}

/** What a sandbox path turned out to be when probed. */
export type SandboxProbe = 'netns' | 'missing' | 'not-netns';

/** Everything this instance owns, as read from the kernel. */
export interface ActualState {
  /** The name prefix the state was read for. */
  readonly prefix: string;
  /** Overlay namespaces of this prefix, by network id (sorted). */
  readonly networks: readonly ActualNetwork[];
  /** The host namespace's share: egress links, gateway bridge, iptables. */
  readonly host: ActualHost;
  /** Filled by `apply()` for the sandbox paths of the desired state; absent means "assume they exist". */
  readonly sandboxes?: Readonly<Record<string, SandboxProbe>>;
}

/** Plan stages in execution order; the batches of one stage are independent and run concurrently. */
export type PlanStageName = 'delete' | 'namespaces' | 'create' | 'configure' | 'sandbox' | 'mark';

/** One line of a batch, with what it is for. */
export interface PlanOp {
  /** One line of an `ip -batch`/`bridge -batch` input. */
  readonly line: string;
  /** The object the line is for; a failure is reported against it. */
  readonly object: DataplaneObject;
  /** What the line does, for error messages: "create vxlan0 (VNI 4097, UDP port 4789)". */
  readonly action: string;
  /** Failure key: when this line fails, later lines that require the key are skipped. */
  readonly key: string;
  /** Keys that must not have failed before this line runs. */
  readonly requires: readonly string[];
}

/** One `ip`/`bridge -batch` process: its lines run in order in one namespace. */
export interface PlanBatch {
  readonly tool: 'ip' | 'bridge';
  readonly netns: NetnsTarget;
  readonly ops: readonly PlanOp[];
}

/** A step of a plan: its batches are independent of each other and run concurrently. */
export interface PlanStage {
  readonly name: PlanStageName;
  readonly batches: readonly PlanBatch[];
}

/** The exact changes that turn an actual state into the desired one. */
export interface Plan {
  /** Non-empty stages, in execution order. */
  readonly stages: readonly PlanStage[];
  /** Desired objects refused before touching the kernel; those objects are left as they are. */
  readonly errors: readonly DataplaneError[];
  /** Desired objects planned as asked but worth a warning (see {@link ApplyReport.warnings}). */
  readonly warnings: readonly DataplaneError[];
  /** Number of lines (one kernel change each). 0 means the kernel already matches. */
  readonly changes: number;
}

/** Options of {@link Dataplane.apply}. */
export interface ApplyOptions {
  /** Aborts between batches (a running batch is killed); `apply` then rejects with the abort reason. */
  readonly signal?: AbortSignal;
  /**
   * Take each network's vxlan0 neighbour and FDB entries from what the last error-free apply (full or
   * {@link Dataplane.applyPeers}) left, instead of reading them back: that read grows with the number
   * of peers, and a change of local endpoints does not need it. Everything else is read as always.
   * Drift in those two tables is then repaired only by an apply without this option, which callers
   * run periodically. Ignored when there is no such apply to build on, and after a failed line (the
   * next round reads everything).
   */
  readonly trustPeers?: boolean;
}

/** What one {@link Dataplane.apply} did. */
export interface ApplyReport {
  /** Kernel changes made (lines that succeeded). 0 when the kernel already matched. */
  readonly changes: number;
  /** Read → plan → execute rounds run; > 1 when a batch failed and the state was read back. */
  readonly rounds: number;
  /** Per-object errors of the final round; everything else was applied. */
  readonly errors: readonly DataplaneError[];
  /**
   * Things applied as asked that may not work as the user expects: a network whose MTU is above what
   * this host's underlay carries (`MtuExceedsUnderlayError`). The agent logs them and counts them.
   */
  readonly warnings: readonly DataplaneError[];
  /** Wall time of the whole call, including reads. */
  readonly durationMs: number;
}

/** What one {@link Dataplane.applyPeers} did. */
export interface PeerApplyReport extends ApplyReport {
  /**
   * False when the change was not applied on its own (`reason` says why: no error-free full apply
   * before it, a duplicate or invalid peer, …): nothing was done, and the caller applies the full
   * desired state with {@link Dataplane.apply}. True when its lines ran; `errors` then lists lines
   * the kernel refused, and the next call must be a full apply (which reads the kernel back).
   */
  readonly incremental: boolean;
  readonly reason?: string;
}

/** What `ensureGatewayBridge` made or found. */
export interface GatewayBridgeInfo {
  readonly name: string;
  /** e.g. 172.18.0.0/16 */
  readonly subnet: string;
  /** e.g. 172.18.0.1 */
  readonly gateway: string;
  /** The IPv6 subnet (a /64) when the bridge carries IPv6 egress, e.g. fd6b:766e:6777::/64. */
  readonly subnet6?: string;
  /** e.g. fd6b:766e:6777::1 */
  readonly gateway6?: string;
}

/**
 * The Linux data plane of one host: turns a {@link DesiredState} into overlay namespaces, bridges,
 * VXLAN devices, veth pairs, neighbour and FDB entries, and a gateway bridge — and reads them back.
 *
 * Calls on one instance are serialised (a second `apply` waits for the first). Needs root
 * (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces). Never talks to the store.
 */
export class Dataplane {
  readonly #config: ResolvedConfig;
  readonly #logger: Logger;
  #tuned = false;
  #gatewayReady = false;
  #queue: Promise<unknown> = Promise.resolve();
  /**
   * What each network's vxlan0 holds after the last error-free apply (full, or incremental since);
   * undefined after an apply with errors, when only a full apply (which reads the kernel) may follow.
   */
  #programmed: Map<string, ProgrammedNetwork> | undefined;
  readonly #sessions = new BatchSessions();

  /** Validates `config`; throws {@link InvalidConfigError}. Touches nothing in the kernel. */
  constructor(config: DataplaneConfig) {
    this.#config = resolveConfig(config);
    this.#logger = (config.logger ?? pino({ level: 'silent' })).child({ component: 'dataplane', prefix: this.#config.prefix });
  }

  /** The resolved name prefix. */
  get prefix(): string {
    return this.#config.prefix;
  }

  /** MTU given to overlay interfaces unless a network overrides it (underlay MTU − 50, or − 70 for an IPv6 VTEP). */
  get overlayMtu(): number {
    return this.#config.overlayMtu;
  }

  /**
   * This host's underlay interface as the kernel has it now: the interface holding the configured VTEP
   * address in the host namespace, its MTU, and the largest overlay MTU it carries. The agent reads it at
   * start (for the default MTU of networks it creates, and to report networks whose MTU does not fit)
   * before constructing the data plane with `underlayMtu`; this method re-reads it (MTU changed since).
   * Throws InvalidConfigError when no interface holds the VTEP address.
   */
  readUnderlay(options: { signal?: AbortSignal } = {}): Promise<UnderlayInfo> {
    const hostNetns = this.#config.host.kind === 'self' ? undefined : this.#config.hostLabel;
    return readUnderlay({ ...(hostNetns ? { hostNetns } : {}), address: this.#config.vtep, ...(options.signal ? { signal: options.signal } : {}) });
  }

  /**
   * Everything this instance owns, read from the kernel: its overlay namespaces (links with addresses,
   * vxlan0's neighbour and FDB entries), its host links, the gateway bridge, and (unless
   * `iptables: false`) its iptables rules. Container-side interfaces are not read: an endpoint counts
   * as present when its overlay-side veth carries the completion marker (see names.ts).
   */
  readState(options: { iptables?: boolean; signal?: AbortSignal } = {}): Promise<ActualState> {
    return readActualState(this.#config, { iptables: options.iptables ?? true, ...(options.signal ? { signal: options.signal } : {}) });
  }

  /**
   * Pure: the exact changes that turn `actual` into `desired`, and the desired objects refused up front.
   * Applying a plan and planning again against the new state yields a plan with `changes === 0`.
   */
  plan(desired: DesiredState, actual: ActualState): Plan {
    return planChanges(desired, actual, this.#config);
  }

  /**
   * Makes the kernel match `desired`: read → plan → execute; when a line fails, read back and plan again,
   * at most {@link APPLY_MAX_ROUNDS} rounds, stopping early when a round fails exactly like the last one.
   * Call it with the full desired state after every change: an unchanged state costs the reads only, one
   * new peer costs one neighbour and one FDB line. Per-object failures are reported in
   * `errors`, everything else is applied. Rejects only on abort or when the kernel cannot be read.
   */
  apply(desired: DesiredState, options: ApplyOptions = {}): Promise<ApplyReport> {
    return this.#exclusive(() => this.#apply(desired, options.signal, options.trustPeers === true));
  }

  /**
   * The incremental path: applies a change of peers on top of the last apply without reading the
   * kernel — one neighbour and one FDB line per peer that came or went, through long-lived batch
   * processes (batch-session.ts) — when the full planner would make exactly those lines (see
   * peer-delta.ts); otherwise does nothing and says so (`incremental: false`), and the caller calls
   * {@link apply} with the full desired state. Only valid when nothing but this instance changes the
   * kernel between two calls: drift made behind its back is repaired by the next {@link apply}, which
   * callers run periodically.
   */
  applyPeers(deltas: readonly PeerDelta[], options: ApplyOptions = {}): Promise<PeerApplyReport> {
    return this.#exclusive(() => this.#applyPeers(deltas, options.signal));
  }

  /** Ends the long-lived batch processes of the incremental path (they also end with this process). */
  close(): void {
    this.#sessions.close();
  }

  /**
   * Creates (idempotently) the gateway bridge, its iptables rules and IPv4 forwarding in the host
   * namespace, and returns its subnet and gateway; the agent allocates egress addresses from the subnet.
   * Where the host has IPv6 (see {@link GatewayBridgeConfig.ipv6}) the bridge also gets an IPv6 /64
   * (`subnet6`/`gateway6`, ip6tables masquerade, IPv6 forwarding), and the agent may give endpoints an
   * `egress.addressIPv6` from it. An existing bridge keeps its subnets. Throws a {@link DataplaneError}
   * (e.g. GatewayPoolExhaustedError).
   */
  ensureGatewayBridge(): Promise<GatewayBridgeInfo> {
    return this.#exclusive(() => this.#ensureGateway());
  }

  /**
   * Removes every object with this prefix: overlay namespaces (and with them the container-side
   * interfaces), egress links, the gateway bridge if this prefix created it, and the iptables chains.
   * Tries everything, then throws {@link TeardownIncompleteError} if anything is left.
   */
  destroyAll(): Promise<void> {
    return this.#exclusive(() => {
      this.#forgetProgrammed();
      return this.#destroyAll();
    });
  }

  #forgetProgrammed(): void {
    this.#programmed = undefined;
    // A session keeps the namespace it entered alive (and with it a deleted network's VXLAN device).
    this.#sessions.close();
  }

  async #applyPeers(deltas: readonly PeerDelta[], signal: AbortSignal | undefined): Promise<PeerApplyReport> {
    const started = performance.now();
    signal?.throwIfAborted();
    const nothing = (reason: string): PeerApplyReport => ({ incremental: false, reason, changes: 0, rounds: 0, errors: [], warnings: [], durationMs: performance.now() - started });
    if (!this.#programmed) return nothing('no error-free full apply to build on');
    const planned = planPeerDelta(deltas, this.#programmed, this.#config);
    if ('full' in planned) return nothing(planned.full);
    if (planned.plan.changes === 0) return { incremental: true, changes: 0, rounds: 0, errors: [], warnings: [], durationMs: performance.now() - started };
    const execution = await executePlan(planned.plan, { runner: (tool, netns, lines) => this.#sessions.run(tool, netns, lines), ...(signal ? { signal } : {}) });
    if (execution.errors.length === 0) commitPeerDelta(this.#programmed, planned);
    else {
      this.#programmed = undefined;
      for (const err of execution.errors.slice(0, LOGGED_ERRORS_PER_APPLY)) this.#logger.warn({ code: err.code, nid: err.object.network, peer: err.object.peer }, err.message);
    }
    const durationMs = performance.now() - started;
    this.#logger.debug({ changes: execution.succeeded, errors: execution.errors.length, durationMs: Math.round(durationMs) }, 'peers applied');
    return { incremental: true, changes: execution.succeeded, rounds: 1, errors: execution.errors, warnings: [], durationMs };
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #ensureGateway(): Promise<GatewayBridgeInfo> {
    if (!this.#config.gateway) throw new InvalidConfigError('gatewayBridge', false, 'this data plane has no gateway bridge');
    const info = await ensureGatewayBridge(this.#config, this.#logger);
    this.#gatewayReady = true;
    return info;
  }

  async #apply(desired: DesiredState, signal: AbortSignal | undefined, trustPeers: boolean): Promise<ApplyReport> {
    const started = performance.now();
    signal?.throwIfAborted();
    if (!this.#tuned) {
      this.#tuned = true;
      await raiseNeighbourThresholds(this.#config, this.#logger);
    }
    const upfront: DataplaneError[] = [];
    const wantsGateway = this.#config.gateway !== undefined && desired.networks.some((n) => !n.internal && n.endpoints.some((e) => e.sandbox?.egress));
    let gatewayTried = false;
    const ensureGateway = async (): Promise<void> => {
      gatewayTried = true;
      try {
        await this.#ensureGateway();
      } catch (err) {
        if (!isDataplaneError(err)) throw err;
        upfront.push(err);
      }
    };
    if (wantsGateway && !this.#gatewayReady) await ensureGateway();

    let known = trustPeers && this.#programmed ? knownPeers(this.#programmed) : undefined;
    this.#programmed = undefined;
    let changes = 0;
    let rounds = 0;
    let plan: Plan | undefined;
    let resolved: ResolvedDesiredState | undefined;
    let execution: ExecutionResult | undefined;
    let lastFailure = '';
    while (rounds < APPLY_MAX_ROUNDS) {
      signal?.throwIfAborted();
      const [state, sandboxes] = await Promise.all([
        readActualState(this.#config, { iptables: false, ...(signal ? { signal } : {}), ...(known ? { known } : {}) }),
        probeSandboxes(desired),
      ]);
      if (wantsGateway && !gatewayTried && !state.host.gatewayBridge?.subnet) {
        await ensureGateway(); // it vanished since this instance last made it
        continue;
      }
      rounds++;
      const actual = { ...state, sandboxes };
      resolved = resolveDesiredState(desired, this.#config, actual);
      plan = planResolved(resolved, actual, this.#config);
      execution = undefined;
      if (plan.changes === 0) break;
      // netns del/add: a batch session would keep a deleted namespace alive, or program a replaced one
      if (plan.stages.some((s) => s.name === 'namespaces')) this.#sessions.close();
      execution = await executePlan(plan, signal ? { signal } : {});
      changes += execution.succeeded;
      if (execution.failedKeys.size === 0) break;
      const failure = execution.errors.map((e) => e.message).join('\n');
      if (failure === lastFailure) break;
      lastFailure = failure;
      known = undefined; // a line failed: read everything back
    }
    const errors = [...upfront, ...(plan?.errors ?? []), ...(execution?.errors ?? [])];
    const warnings = plan?.warnings ?? [];
    if (errors.length === 0 && resolved) this.#programmed = new Map(resolved.networks.map((n) => [n.id, programmedNetworkOf(n)]));
    const durationMs = performance.now() - started;
    const summary = { changes, rounds, errors: errors.length, warnings: warnings.length, durationMs: Math.round(durationMs) };
    for (const err of errors.slice(0, LOGGED_ERRORS_PER_APPLY)) {
      const o = err.object;
      this.#logger.warn({ code: err.code, nid: o.network, eid: o.endpoint, peer: o.peer, ifname: o.ifname, netns: o.netns }, err.message);
    }
    // Warnings are logged by the caller, which knows when a network first appears (once, not per apply).
    if (errors.length > 0) this.#logger.warn(summary, 'data plane applied with errors; the rest is in place');
    else if (changes > 0) this.#logger.debug(summary, 'data plane applied');
    return { changes, rounds, errors, warnings, durationMs };
  }

  async #destroyAll(): Promise<void> {
    const config = this.#config;
    const state = await readActualState(config, { iptables: true });
    const execution = await executePlan(planChanges({ networks: [] }, state, config));
    const errors: DataplaneError[] = [...execution.errors];
    const gw = state.host.gatewayBridge;
    if (gw?.owned) {
      const r = await runBatch('ip', config.host, [`link del dev ${gw.name}`]);
      const reason = r.fatal ?? r.failures.get(1);
      if (reason) errors.push(new KernelRefusedError({ kind: 'gateway-bridge', ifname: gw.name }, `remove gateway bridge ${gw.name}`, config.hostLabel, reason, `link del dev ${gw.name}`));
    }
    const chains = iptablesChains(config.prefix);
    for (const family of [4, 6] as const) {
      const have = family === 4 ? state.host.iptables : state.host.ip6tables;
      for (const [table, chain] of [['filter', chains.forward], ['nat', chains.postrouting]] as const) {
        const input = iptablesRemovalInput(table, have?.[table] ?? [], [chain]);
        if (!input) continue;
        try {
          await iptablesRestore(config, input, { kind: 'host', netns: config.hostLabel }, family);
        } catch (err) {
          if (!isDataplaneError(err)) throw err;
          errors.push(err);
        }
      }
    }
    this.#gatewayReady = false;
    if (errors.length > 0) throw new TeardownIncompleteError(config.prefix, errors);
    this.#logger.info({ networks: state.networks.length }, 'removed every data plane object of this prefix');
  }
}
