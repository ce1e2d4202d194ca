/**
 * Pure: the cluster view and this host's sandboxes → the {@link NameTable} the resolver answers from,
 * and the checks a resolver process applies to a table it receives.
 */

import { allEndpoints, BucketMap, endpointsOfNode, mapChanges, type ClusterView } from '../cluster-view.ts';
import type { EndpointRecord } from '../layout.ts';
import { InvalidNameTableError } from './errors.ts';
import { NAME_TABLE_FORMAT, type LocalSandbox, type NamePatch, type NameRecord, type NamespaceListener, type NameTable, type TableNetwork, type TableSandbox } from './names.ts';

/** Fields the endpoint record will carry (aliases, IPv6); read when present. */
type NamedEndpoint = EndpointRecord & { aliases?: unknown; ip6?: unknown };

function aliasesOf(e: NamedEndpoint): string[] {
  return Array.isArray(e.aliases) ? e.aliases.filter((a): a is string => typeof a === 'string' && a !== '' && a !== e.name) : [];
}

function recordOf(e: NamedEndpoint): NameRecord {
  return {
    endpoint: e.id,
    name: e.name,
    aliases: aliasesOf(e),
    ip: e.ip,
    ...(typeof e.ip6 === 'string' && e.ip6 !== '' ? { ip6: e.ip6 } : {}),
  };
}

/**
 * This host's sandboxes from the view: its endpoints (`node`) grouped by `sandboxOf(endpoint)`, which
 * defaults to the record's `netns` (standalone endpoints). Docker endpoints carry no netns in the
 * store: pass their SandboxKey (from Join). An endpoint with neither is a sandbox of its own.
 */
export function localSandboxes(view: ClusterView, node: string, sandboxOf?: (endpointId: string) => string | undefined): LocalSandbox[] {
  const groups = new Map<string, string[]>();
  for (const e of endpointsOfNode(view, node)) {
    const key = sandboxOf?.(e.id) ?? e.netns ?? `endpoint:${e.id}`;
    let list = groups.get(key);
    if (!list) groups.set(key, (list = []));
    list.push(e.id);
  }
  return [...groups].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([key, endpoints]) => ({ key, endpoints: endpoints.sort() }));
}

/** A table without its records: which networks, and who asks. What decides whether a patch will do. */
export interface TableShape {
  readonly networks: ReadonlyArray<Omit<TableNetwork, 'records'>>;
  readonly sandboxes: readonly TableSandbox[];
}

/**
 * The table's shape: every network that a local sandbox is attached to, every sandbox with its networks
 * and source addresses. Sandbox entries naming endpoints not in the view, or on networks whose record is
 * missing, are left out. `node` (the sandboxes' owner) lets it look only at that node's endpoints.
 */
export function tableShape(view: ClusterView, sandboxes: readonly LocalSandbox[], node?: string): TableShape {
  const endpointById = new Map<string, NamedEndpoint>();
  const candidates = node !== undefined ? endpointsOfNode(view, node) : allEndpoints(view);
  for (const e of candidates) endpointById.set(e.id, e);

  const tableSandboxes: TableSandbox[] = [];
  const wanted = new Set<string>();
  for (const sb of sandboxes) {
    const eps = sb.endpoints
      .map((id) => endpointById.get(id))
      .filter((e): e is NamedEndpoint => e !== undefined && view.networks.has(e.network))
      .sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : 1));
    if (eps.length === 0) continue;
    const networks = [...new Set(eps.map((e) => e.network))];
    for (const n of networks) wanted.add(n);
    const forward = sb.forward ?? networks.some((n) => !view.networks.get(n)!.internal);
    tableSandboxes.push({
      key: sb.key,
      networks,
      sources: eps.map((e) => ({ network: e.network, ip: e.ip })),
      hostSources: [...(sb.hostSources ?? [])],
      forward,
    });
  }
  const networks = [...wanted].map((nid) => {
    const n = view.networks.get(nid)!;
    return { id: n.id, name: n.name, internal: n.internal };
  });
  networks.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : 1));
  return { networks, sandboxes: tableSandboxes };
}

/** Every endpoint of a network, on any host, as name records (sorted by name, then endpoint). */
export function networkRecords(view: ClusterView, nid: string): NameRecord[] {
  return [...(view.endpoints.get(nid)?.values() ?? [])]
    .map((e) => recordOf(e as NamedEndpoint))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.endpoint < b.endpoint ? -1 : 1));
}

/**
 * Builds the table: every network that a local sandbox is attached to, with every endpoint of it on
 * any host; every sandbox with its networks and source addresses ({@link tableShape}).
 */
export function buildNameTable(view: ClusterView, sandboxes: readonly LocalSandbox[], node?: string): NameTable {
  return tableOfShape(view, tableShape(view, sandboxes, node));
}

/** A shape with every endpoint of its networks filled in from the view. */
export function tableOfShape(view: ClusterView, shape: TableShape): NameTable {
  return { format: NAME_TABLE_FORMAT, networks: shape.networks.map((n) => ({ ...n, records: networkRecords(view, n.id) })), sandboxes: shape.sandboxes };
}

/** A network's endpoint map as a table was built from it; compared by identity, then by record. */
export type SentRecords = ReadonlyMap<string, ReadonlyMap<string, EndpointRecord> | undefined>;

/** The endpoint maps of `networkIds` in `view`, to compare the next view against ({@link recordPatch}). */
export function sentRecords(view: ClusterView, networkIds: Iterable<string>): SentRecords {
  const out = new Map<string, ReadonlyMap<string, EndpointRecord> | undefined>();
  for (const nid of networkIds) out.set(nid, view.endpoints.get(nid));
  return out;
}

/**
 * What changed in the records of `networkIds` since `sent`: records whose object is not the one sent
 * (a store event makes a new object), endpoints gone. With the view's {@link BucketMap}s only the
 * buckets a change copied are looked at, so this is O(changes), not O(endpoints).
 */
export function recordPatch(sent: SentRecords, view: ClusterView): NamePatch {
  const networks: Array<{ id: string; put: NameRecord[]; remove: readonly string[] }> = [];
  for (const [nid, before] of sent) {
    const now = view.endpoints.get(nid);
    if (now === before) continue;
    const d = now instanceof BucketMap && before instanceof BucketMap ? now.changesSince(before) : mapChanges(before, now);
    const put = d.put.map((e) => recordOf(e as NamedEndpoint));
    const remove = d.removed;
    if (put.length > 0 || remove.length > 0) networks.push({ id: nid, put, remove });
  }
  return { networks };
}

/**
 * One listener per network of the table (each has a local endpoint, hence an overlay namespace here),
 * at the path `netnsOf(network id)` gives (the agent: `/run/netns/` + the data plane's `overlayNetnsName`).
 */
export function listenersFor(table: Pick<NameTable, 'networks'> | TableShape, netnsOf: (networkId: string) => string): NamespaceListener[] {
  return table.networks.map((n) => ({ network: n.id, netns: netnsOf(n.id) }));
}

/**
 * Which of a sandbox's endpoints carries the connected route to the resolver address: its oldest
 * (by `createdAt`, then id). The kernel refuses a second identical /32 on another interface (netlink
 * EEXIST, and dockerd fails the whole join on it), so exactly one interface per sandbox holds it; when
 * that endpoint leaves, the next one takes it over.
 */
export function routeHolder(endpoints: readonly Pick<EndpointRecord, 'id' | 'createdAt'>[]): string | undefined {
  let best: Pick<EndpointRecord, 'id' | 'createdAt'> | undefined;
  for (const e of endpoints) {
    if (!best || e.createdAt < best.createdAt || (e.createdAt === best.createdAt && e.id < best.id)) best = e;
  }
  return best?.id;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isString);
function isNameRecord(r: unknown): boolean {
  const rec = r as Record<string, unknown> | null;
  return !!rec && isString(rec.endpoint) && isString(rec.name) && isString(rec.ip) && isStringArray(rec.aliases) && (rec.ip6 === undefined || isString(rec.ip6));
}

/**
 * Checks a table received from outside the process (the feed socket): shape and types only. Throws
 * {@link InvalidNameTableError} naming the first bad field.
 */
export function validateNameTable(value: unknown): NameTable {
  const fail = (where: string, what: string): never => {
    throw new InvalidNameTableError(`name table: ${where} ${what}`);
  };
  if (!value || typeof value !== 'object') fail('the table', 'is not an object');
  const t = value as Record<string, unknown>;
  if (t.format !== NAME_TABLE_FORMAT) fail('format', `is ${JSON.stringify(t.format)}, this resolver reads format ${NAME_TABLE_FORMAT}`);
  if (!Array.isArray(t.networks)) fail('networks', 'is not an array');
  if (!Array.isArray(t.sandboxes)) fail('sandboxes', 'is not an array');
  (t.networks as unknown[]).forEach((n, i) => {
    const o = n as Record<string, unknown> | null;
    if (!o || !isString(o.id) || !isString(o.name) || typeof o.internal !== 'boolean' || !Array.isArray(o.records)) fail(`networks[${i}]`, 'needs id, name, internal and records');
    (o!.records as unknown[]).forEach((r, j) => {
      if (!isNameRecord(r)) {
        fail(`networks[${i}].records[${j}]`, 'needs endpoint, name, aliases (strings), ip and an optional ip6');
      }
    });
  });
  (t.sandboxes as unknown[]).forEach((s, i) => {
    const o = s as Record<string, unknown> | null;
    if (!o || !isString(o.key) || !isStringArray(o.networks) || !isStringArray(o.hostSources) || typeof o.forward !== 'boolean' || !Array.isArray(o.sources)) {
      fail(`sandboxes[${i}]`, 'needs key, networks, sources, hostSources and forward');
    }
    (o!.sources as unknown[]).forEach((src, j) => {
      const p = src as Record<string, unknown> | null;
      if (!p || !isString(p.network) || !isString(p.ip)) fail(`sandboxes[${i}].sources[${j}]`, 'needs network and ip');
    });
  });
  return value as NameTable;
}

/** Checks a patch received from outside the process: shape and types only, like {@link validateNameTable}. */
export function validateNamePatch(value: unknown): NamePatch {
  const fail = (where: string, what: string): never => {
    throw new InvalidNameTableError(`name patch: ${where} ${what}`);
  };
  if (!value || typeof value !== 'object' || !Array.isArray((value as { networks?: unknown }).networks)) fail('the patch', 'needs a networks list');
  ((value as { networks: unknown[] }).networks).forEach((n, i) => {
    const o = n as Record<string, unknown> | null;
    if (!o || !isString(o.id) || !Array.isArray(o.put) || !isStringArray(o.remove)) fail(`networks[${i}]`, 'needs id, put (records) and remove (endpoint ids)');
    (o!.put as unknown[]).forEach((r, j) => {
      if (!isNameRecord(r)) fail(`networks[${i}].put[${j}]`, 'needs endpoint, name, aliases (strings), ip and an optional ip6');
    });
  });
  return value as NamePatch;
}
