/**
 * The names face of the agent: the contract. Containers on kvnet networks resolve the names of every
 * endpoint of every network their sandbox is attached to, on any host, through one well-known resolver
 * address reached over their kvnet interface; every other name is forwarded upstream (except for
 * sandboxes only on internal networks). README.md in this folder has the design and the facts behind it.
 *
 * ```ts
 * const table = buildNameTable(view, localSandboxes(view, node));      // pure
 * const names = await startNames({ logger, socketPath: DEFAULT_RESOLVER_SOCKET });
 * await names.update(table, [{ network: nid, netns: '/run/netns/kvnet-<nid>' }]);
 * await names.patch(recordPatch(sentRecords(view, [nid]), nextView));  // only what changed
 * await names.stop();        // the resolver process keeps answering from the last table
 * await names.shutdown();    // the resolver process exits (uninstall, tests)
 * ```
 *
 * Three parts:
 * - {@link buildNameTable}: view + local sandboxes → {@link NameTable}, a plain JSON-able value;
 * - the **resolver process** (`resolver-main.ts`): a small long-lived process that owns the UDP/TCP
 *   port-53 sockets (made inside each overlay namespace by a short-lived `nsenter` child that hands them
 *   back) and answers from the last table it was given, also while no agent is running;
 * - {@link startNames}: the agent's side, which finds or starts that process and feeds it over a unix socket.
 *
 * What the kernel needs besides the sockets, and who does it:
 * - the resolver address as a /32 on `lo` of each overlay namespace and of the host namespace: the
 *   resolver process adds it itself, where it listens;
 * - a connected route `<address>/32 dev <kvnet interface>` in each container's sandbox: Docker adds it
 *   from the Join answer ({@link joinStaticRoutes}); for standalone sandboxes `ensureSandboxRoute()`
 *   (resolver-address.ts) adds it; either way only on one kvnet interface per sandbox
 *   ({@link routeHolder}).
 */

import type { Logger } from 'pino';

// The functions named here live beside this file (name-table.ts, names-client.ts, resolver-address.ts);
// index.ts is the folder's one entry and exports them with these types.

/** The resolver address when none is configured: link-local, so it never collides with a container subnet or an upstream. */
export const DEFAULT_RESOLVER_ADDRESS = '169.254.53.53';
/** Where the resolver process listens for its feeder. */
export const DEFAULT_RESOLVER_SOCKET = '/run/kvnet/resolver.sock';
/**
 * TTL of kvnet's own answers. Zero: a removed endpoint's name must stop resolving within a second, and
 * any positive TTL lets a cache (nscd, systemd-resolved in a container, a language runtime) serve it
 * for that long after removal. Docker's embedded resolver, the usual asker, does not cache at all.
 */
export const NAME_TTL_S = 0;
/** Format of {@link NameTable}; a resolver process refuses a table of another format. */
export const NAME_TABLE_FORMAT = 1;

/** One container's network namespace and this host's kvnet endpoints in it. */
export interface LocalSandbox {
  /** The sandbox's identity: its netns path (standalone) or Docker's SandboxKey. Only compared, never opened. */
  readonly key: string;
  /** Ids of this host's kvnet endpoints in the sandbox. */
  readonly endpoints: readonly string[];
  /**
   * Other addresses this sandbox's queries may come from at the host namespace's listener (its gateway
   * bridge address, when its route to the resolver address went away with an interface): such queries
   * get this sandbox's names as well. Optional.
   */
  readonly hostSources?: readonly string[];
  /**
   * Whether names outside kvnet are forwarded upstream for this sandbox. Default: when any of its kvnet
   * networks is not internal. Set `true` for a sandbox that reaches the outside through a non-kvnet network.
   */
  readonly forward?: boolean;
}

/** One endpoint's names and addresses. */
export interface NameRecord {
  readonly endpoint: string;
  /** The endpoint's name (a Docker container name, `kvnet network connect --name`). */
  readonly name: string;
  /** Further names on its network (`--network-alias`). */
  readonly aliases: readonly string[];
  readonly ip: string;
  readonly ip6?: string;
}

/** A network whose names some local sandbox may ask for. */
export interface TableNetwork {
  readonly id: string;
  readonly name: string;
  readonly internal: boolean;
  /** Every endpoint of the network, on every host. */
  readonly records: readonly NameRecord[];
}

/** Who asks: a sandbox, the networks whose names it gets, and the addresses its queries come from. */
export interface TableSandbox {
  readonly key: string;
  /** Network ids, in the order names are looked up after the network a query arrived on. */
  readonly networks: readonly string[];
  /** Its address on each of those networks: a query arriving in `network`'s overlay namespace from `ip` is this sandbox's. */
  readonly sources: ReadonlyArray<{ readonly network: string; readonly ip: string }>;
  /** See {@link LocalSandbox.hostSources}. */
  readonly hostSources: readonly string[];
  readonly forward: boolean;
}

/**
 * Everything the resolver answers from: a pure function of the cluster view and the local sandboxes,
 * plain JSON (it crosses a unix socket). Sent whole when its networks, sandboxes or listeners change,
 * else patched ({@link NamePatch}).
 */
export interface NameTable {
  readonly format: typeof NAME_TABLE_FORMAT;
  /** Networks with at least one local endpoint, sorted by name. */
  readonly networks: readonly TableNetwork[];
  readonly sandboxes: readonly TableSandbox[];
}

/**
 * What changed in the records of a table already sent, per network: records added or replaced (by
 * endpoint) and endpoints removed. Networks, sandboxes and listeners are the last table's; when one of
 * those changes the whole table is sent instead. O(changed records), whatever the size of the table.
 */
export interface NamePatch {
  readonly networks: ReadonlyArray<{ readonly id: string; readonly put: readonly NameRecord[]; readonly remove: readonly string[] }>;
}

/** An overlay namespace that needs a listener, and the network it belongs to. */
export interface NamespaceListener {
  readonly network: string;
  /** Absolute path of the namespace (`/run/netns/<prefix>-<network id>`). */
  readonly netns: string;
}

/** What the resolver process answers with besides the table; sent with every update. */
export interface ResolverSettings {
  /** The resolver address (IPv4). Default {@link DEFAULT_RESOLVER_ADDRESS}. */
  readonly address: string;
  /** Upstream servers `ip`, `ip:port` or `[ipv6]:port`, tried in order. Empty: the `nameserver` lines of {@link resolvConf}. */
  readonly upstreams: readonly string[];
  /** Read (again whenever it changes) when {@link upstreams} is empty. Default `/etc/resolv.conf`. */
  readonly resolvConf: string;
  /**
   * Also listen in the resolver's own (host) namespace, with the address on its `lo`: containers on no
   * kvnet network reach it by their default route (daemon.json's `dns` applies to them too), and it
   * forwards their queries upstream.
   */
  readonly hostListener: boolean;
}

export interface NamesContext {
  readonly logger: Logger;
  /** The resolver process's feed socket. Default {@link DEFAULT_RESOLVER_SOCKET}. */
  readonly socketPath?: string;
  /** Default {@link DEFAULT_RESOLVER_ADDRESS}. */
  readonly address?: string;
  /** See {@link ResolverSettings.upstreams}; each is checked here, an invalid one throws `InvalidConfigError` naming it. */
  readonly upstreams?: readonly string[];
  readonly resolvConf?: string;
  /** See {@link ResolverSettings.hostListener}. Default false; the agent on a Docker host sets it. */
  readonly hostListener?: boolean;
  /**
   * How to start the resolver process when none answers on the socket: argv, the socket path is
   * appended as `--socket <path>`. Default: this Node binary running `resolver-main.ts` through tsx
   * when running from sources, or `kvnet-resolver.mjs` next to the bundle. It may also be a launcher
   * that exits 0 once it has started the resolver elsewhere (e.g. `systemd-run --unit kvnet-resolver …`,
   * so that the resolver is outside the agent's cgroup and survives `systemctl restart`).
   */
  readonly resolverCommand?: readonly string[];
  /** Where the started resolver process writes its log (JSON lines). Default: next to the socket, `resolver.log`. */
  readonly resolverLog?: string;
  /** How long to wait for a started resolver process to answer. Default 10 s. */
  readonly startTimeoutMs?: number;
}

/** How one listener fared in an update. */
export interface ListenerReport {
  /** The overlay namespace path, or `host`. */
  readonly netns: string;
  readonly network?: string;
  readonly state: 'listening' | 'failed';
  /** Why it failed (the message names the namespace and the address). */
  readonly error?: string;
  /** Time to open it in this update (absent when it was already open). */
  readonly openedMs?: number;
}

export interface UpdateReport {
  readonly listeners: readonly ListenerReport[];
}

/** The resolver process as it reports itself. */
export interface ResolverStatus {
  readonly pid: number;
  readonly startedAt: string;
  readonly rssMiB: number;
  /** When the current table arrived or was last patched (ISO), if any has. */
  readonly tableAt?: string;
  /** Name records it answers from, over all networks of its table. */
  readonly records: number;
  readonly listeners: readonly ListenerReport[];
  /** Queries by outcome since start: `answered`, `nodata`, `forwarded`, `refused`, `servfail`, `formerr`, `notimp`, `dropped`. */
  readonly counters: Readonly<Record<string, number>>;
}

/** The running names face, as {@link startNames} returns it. */
export interface Names {
  /** The resolver process being fed. */
  readonly resolverPid: number;
  /** True when this call started the resolver process; false when it found one running (an agent restart). */
  readonly startedResolver: boolean;
  /**
   * Replaces the table and the set of overlay namespaces listened in. Resolves once the table is in use
   * (at once) and every listener is open or has failed (reported, and retried at once on the next
   * update, otherwise after 2 s doubling up to 60 s). The last update is sent again if the resolver process restarts.
   * Rejects with `ResolverUnavailableError` when the resolver process cannot be reached or started.
   */
  update(table: NameTable, listeners: readonly NamespaceListener[]): Promise<UpdateReport>;
  /**
   * Changes the records of the table last sent by {@link update}, in use once it resolves. Rejects
   * (`ResolverUnavailableError`, `InvalidNameTableError`) when the resolver process does not hold that
   * table — it was restarted or reconnected to since, or refused the patch: send the whole table with
   * {@link update} then.
   */
  patch(patch: NamePatch): Promise<void>;
  /** Called after the client reconnected to a resolver process on its own (the next pass must send the whole table). */
  onReconnect(listener: () => void): void;
  status(): Promise<ResolverStatus>;
  /** Disconnects; the resolver process keeps answering from the last table. */
  stop(): Promise<void>;
  /**
   * Tells the resolver process to exit and waits until it has. `cleanup` (default true) also removes
   * the addresses it added.
   */
  shutdown(options?: { cleanup?: boolean }): Promise<void>;
}
