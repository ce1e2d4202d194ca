/**
 * Pure: a {@link NameTable} compiled into maps, who is asking (the listener a query arrived on and its
 * source address), and what the answer to a question is. No I/O; the responder does that.
 *
 * Matching follows Docker's embedded resolver (libnetwork `Sandbox.ResolveName`, read in moby v28.5.2):
 * the whole name first, then every split `<x>.<network>` at a dot, right to left; for each, aliases
 * before names; without a network part the asker's networks are tried in order (the network the query
 * arrived on first). Names compare case-insensitively. A PTR answer is `<name>.<network name>.`, as
 * Docker's.
 */

import { encodeName, ipv4Bytes, ipv6Bytes, ipv6Text, QTYPE, type DnsAnswer, type DnsQuestion } from './dns-codec.ts';
import { InvalidNameTableError } from './errors.ts';
import { NAME_TTL_S, type NamePatch, type NameRecord, type NameTable } from './names.ts';

interface Addresses {
  readonly v4: string[];
  readonly v6: string[];
}

export interface CompiledNetwork {
  readonly id: string;
  /** Lower-cased. */
  readonly name: string;
  readonly internal: boolean;
  readonly names: ReadonlyMap<string, Addresses>;
  readonly aliases: ReadonlyMap<string, Addresses>;
  /** Canonical address text → PTR target. */
  readonly ptr: ReadonlyMap<string, string>;
}

export interface Scope {
  /** Networks whose names the asker gets, in lookup order. */
  readonly networks: readonly CompiledNetwork[];
  /** Whether other names are forwarded upstream for it. */
  readonly forward: boolean;
}

interface CompiledSandbox {
  readonly networks: readonly string[];
  readonly forward: boolean;
}

export interface CompiledTable {
  readonly networks: ReadonlyMap<string, NetworkNames>;
  /** `<network id> <source ip>` → sandbox. */
  readonly bySource: ReadonlyMap<string, CompiledSandbox>;
  /** Source address at the host listener → sandbox. */
  readonly byHostSource: ReadonlyMap<string, CompiledSandbox>;
}

/** Where a query arrived: an overlay namespace's listener, or the host namespace's. */
export type ListenerRef = { readonly kind: 'overlay'; readonly network: string } | { readonly kind: 'host' };

export const EMPTY_TABLE: CompiledTable = { networks: new Map(), bySource: new Map(), byHostSource: new Map() };

/** Canonical text of an IPv4 or IPv6 address, or undefined when it is neither. */
export function canonicalIp(ip: string): string | undefined {
  try {
    return ip.includes(':') ? ipv6Text(ipv6Bytes(ip)) : [...ipv4Bytes(ip)].join('.');
  } catch {
    return undefined;
  }
}

function encodable(name: string): boolean {
  try {
    encodeName(name);
    return true;
  } catch {
    return false;
  }
}

/** One record as the lookups need it: lower-cased names, canonical addresses, its PTR target. */
interface Prepared {
  /** The record's name as given: records are ordered by it, then by endpoint id (as the table sorts them). */
  readonly name: string;
  readonly endpoint: string;
  readonly key: string;
  readonly aliases: readonly string[];
  readonly ip: string | undefined;
  readonly ip6: string | undefined;
  /** `<name>.<network>.`, or undefined when it cannot go on the wire. */
  readonly ptr: string | undefined;
}

const byRecordOrder = (a: Prepared, b: Prepared): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.endpoint < b.endpoint ? -1 : a.endpoint > b.endpoint ? 1 : 0);

function addTo(index: Map<string, Set<Prepared>>, key: string, p: Prepared): void {
  let set = index.get(key);
  if (!set) index.set(key, (set = new Set()));
  set.add(p);
}

function removeFrom(index: Map<string, Set<Prepared>>, key: string, p: Prepared): void {
  const set = index.get(key);
  if (!set) return;
  set.delete(p);
  if (set.size === 0) index.delete(key);
}

/**
 * One network's names, kept up to date one record at a time: a put or a removal recomputes only the
 * names, aliases and addresses that record touches, so a patch of a few records costs the same at 20
 * and at 50 000 endpoints. The answers are exactly those of compiling the whole record list at once.
 */
export class NetworkNames implements CompiledNetwork {
  readonly name: string;
  readonly names = new Map<string, Addresses>();
  readonly aliases = new Map<string, Addresses>();
  readonly ptr = new Map<string, string>();
  private readonly records = new Map<string, Prepared>();
  private readonly byName = new Map<string, Set<Prepared>>();
  private readonly byAlias = new Map<string, Set<Prepared>>();
  private readonly byAddress = new Map<string, Set<Prepared>>();

  constructor(
    readonly id: string,
    name: string,
    readonly internal: boolean,
    records: readonly NameRecord[] = [],
  ) {
    this.name = name.toLowerCase();
    const touched = { names: new Set<string>(), aliases: new Set<string>(), addresses: new Set<string>() };
    for (const r of records) this.insert(r, touched);
    this.recompute(touched);
  }

  get size(): number {
    return this.records.size;
  }

  /** Adds or replaces records (by endpoint) and removes endpoints, then recomputes what they touched. */
  patch(put: readonly NameRecord[], remove: readonly string[]): void {
    const touched = { names: new Set<string>(), aliases: new Set<string>(), addresses: new Set<string>() };
    for (const endpoint of remove) this.drop(endpoint, touched);
    for (const r of put) this.insert(r, touched);
    this.recompute(touched);
  }

  private prepare(r: NameRecord): Prepared | undefined {
    // An endpoint of an IPv6-only network has its IPv6 address in `ip` (layout.ts): it gets AAAA only.
    const first = canonicalIp(r.ip);
    const ip = first && !first.includes(':') ? first : undefined;
    const second = r.ip6 !== undefined ? canonicalIp(r.ip6) : undefined;
    const ip6 = second && second.includes(':') ? second : first?.includes(':') ? first : undefined;
    if (!ip && !ip6) return undefined;
    // A name that cannot go on the wire (a label over 63 bytes: names may be 64 characters) gets no PTR.
    const target = `${r.name.toLowerCase()}.${this.name}.`;
    return { name: r.name, endpoint: r.endpoint, key: r.name.toLowerCase(), aliases: r.aliases.map((a) => a.toLowerCase()), ip, ip6, ptr: encodable(target) ? target : undefined };
  }

  private insert(r: NameRecord, touched: Touched): void {
    this.drop(r.endpoint, touched);
    const p = this.prepare(r);
    if (!p) return;
    this.records.set(p.endpoint, p);
    this.index(p, touched, addTo);
  }

  private drop(endpoint: string, touched: Touched): void {
    const p = this.records.get(endpoint);
    if (!p) return;
    this.records.delete(endpoint);
    this.index(p, touched, removeFrom);
  }

  /** Adds a record to (or removes it from) the name, alias and address indexes, noting what it touches. */
  private index(p: Prepared, touched: Touched, change: (index: Map<string, Set<Prepared>>, key: string, p: Prepared) => void): void {
    change(this.byName, p.key, p);
    touched.names.add(p.key);
    for (const a of p.aliases) {
      change(this.byAlias, a, p);
      touched.aliases.add(a);
    }
    for (const ip of [p.ip, p.ip6]) {
      if (!ip) continue;
      change(this.byAddress, ip, p);
      touched.addresses.add(ip);
    }
  }

  private recompute(touched: Touched): void {
    for (const key of touched.names) setAddresses(this.names, key, this.byName.get(key));
    for (const key of touched.aliases) setAddresses(this.aliases, key, this.byAlias.get(key));
    for (const ip of touched.addresses) {
      // The first record (in record order) with the address and a PTR target answers its PTR.
      const holders = [...(this.byAddress.get(ip) ?? [])].filter((p) => p.ptr !== undefined).sort(byRecordOrder);
      if (holders.length > 0) this.ptr.set(ip, holders[0]!.ptr!);
      else this.ptr.delete(ip);
    }
  }
}

interface Touched {
  readonly names: Set<string>;
  readonly aliases: Set<string>;
  readonly addresses: Set<string>;
}

/** The addresses of every record holding a name, in record order, each once. */
function setAddresses(map: Map<string, Addresses>, key: string, holders: ReadonlySet<Prepared> | undefined): void {
  if (!holders || holders.size === 0) {
    map.delete(key);
    return;
  }
  const a: Addresses = { v4: [], v6: [] };
  for (const p of [...holders].sort(byRecordOrder)) {
    if (p.ip && !a.v4.includes(p.ip)) a.v4.push(p.ip);
    if (p.ip6 && !a.v6.includes(p.ip6)) a.v6.push(p.ip6);
  }
  map.set(key, a);
}

/** Compiles a table (already validated) for lookups. Records with an unusable address are skipped. */
export function compileTable(table: NameTable): CompiledTable {
  const networks = new Map<string, NetworkNames>();
  for (const n of table.networks) networks.set(n.id, new NetworkNames(n.id, n.name, n.internal, n.records));
  const bySource = new Map<string, CompiledSandbox>();
  const byHostSource = new Map<string, CompiledSandbox>();
  for (const s of table.sandboxes) {
    const sb: CompiledSandbox = { networks: s.networks.filter((n) => networks.has(n)), forward: s.forward };
    for (const src of s.sources) {
      const ip = canonicalIp(src.ip);
      if (ip) bySource.set(`${src.network} ${ip}`, sb);
    }
    for (const h of s.hostSources) {
      const ip = canonicalIp(h);
      if (ip) byHostSource.set(ip, sb);
    }
  }
  return { networks, bySource, byHostSource };
}

/**
 * Applies a patch to a compiled table in place: per network, records put (added or replaced by
 * endpoint) and endpoints removed. A network the table does not have is refused before anything
 * changes ({@link InvalidNameTableError}): the feeder then sends the whole table.
 */
export function patchTable(table: CompiledTable, patch: NamePatch): void {
  for (const n of patch.networks) {
    if (!table.networks.has(n.id)) throw new InvalidNameTableError(`name patch: network ${n.id} is not in the table; send the whole table`);
  }
  for (const n of patch.networks) table.networks.get(n.id)!.patch(n.put, n.remove);
}

/**
 * The asker's scope. A known source gets its sandbox's networks (the arrival network first). An unknown
 * source in an overlay namespace (an endpoint newer than the table) is on that network at least: it
 * gets that network's names, and forwarding unless the network is internal. An unknown source at the
 * host listener gets no names and forwarding (containers on no kvnet network use it through
 * daemon.json's `dns`). A listener of a network missing from the table gets nothing and no forwarding.
 */
export function scopeFor(table: CompiledTable, listener: ListenerRef, source: string): Scope {
  const ip = canonicalIp(source) ?? source;
  if (listener.kind === 'host') {
    const sb = table.byHostSource.get(ip);
    if (!sb) return { networks: [], forward: true };
    return { networks: sb.networks.map((n) => table.networks.get(n)!), forward: sb.forward };
  }
  const arrival = table.networks.get(listener.network);
  if (!arrival) return { networks: [], forward: false };
  const sb = table.bySource.get(`${listener.network} ${ip}`);
  if (!sb) return { networks: [arrival], forward: !arrival.internal };
  const rest = sb.networks.filter((n) => n !== arrival.id).map((n) => table.networks.get(n)!);
  return { networks: [arrival, ...rest], forward: sb.forward };
}

/** What the table says about a question: records (none = the name exists without that type), or not ours. */
export type LookupResult = { readonly kind: 'records'; readonly answers: readonly DnsAnswer[] } | { readonly kind: 'not-found' };

const NOT_FOUND: LookupResult = { kind: 'not-found' };

function findAddresses(scope: Scope, name: string): Addresses | undefined {
  const candidates: Array<[string, string | undefined]> = [[name, undefined]];
  for (let i = name.lastIndexOf('.'); i > 0; i = name.lastIndexOf('.', i - 1)) candidates.push([name.slice(0, i), name.slice(i + 1)]);
  for (const [host, netName] of candidates) {
    const nets = netName === undefined ? scope.networks : scope.networks.filter((n) => n.name === netName);
    for (const n of nets) {
      const a = n.aliases.get(host);
      if (a) return a;
    }
    for (const n of nets) {
      const a = n.names.get(host);
      if (a) return a;
    }
  }
  return undefined;
}

/** `4.3.2.1.in-addr.arpa` → `1.2.3.4`; 32 nibbles `.ip6.arpa` → canonical IPv6; else undefined. */
export function addressOfPtrName(name: string): string | undefined {
  if (name.endsWith('.in-addr.arpa')) {
    const parts = name.slice(0, -'.in-addr.arpa'.length).split('.');
    if (parts.length !== 4 || parts.some((p) => !/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255)) return undefined;
    return parts.reverse().join('.');
  }
  if (name.endsWith('.ip6.arpa')) {
    const nibbles = name.slice(0, -'.ip6.arpa'.length).split('.');
    if (nibbles.length !== 32 || nibbles.some((x) => !/^[0-9a-f]$/.test(x))) return undefined;
    const hex = nibbles.reverse().join('');
    return ipv6Text(Buffer.from(hex, 'hex'));
  }
  return undefined;
}

/** Answers `question` from the asker's scope. */
export function lookup(scope: Scope, question: DnsQuestion): LookupResult {
  if (scope.networks.length === 0) return NOT_FOUND;
  const name = question.name;
  if (question.type === QTYPE.PTR) {
    const ip = addressOfPtrName(name);
    if (ip === undefined) return NOT_FOUND;
    for (const n of scope.networks) {
      const target = n.ptr.get(ip);
      if (target) return { kind: 'records', answers: [{ type: QTYPE.PTR, ttl: NAME_TTL_S, data: target }] };
    }
    return NOT_FOUND;
  }
  const found = findAddresses(scope, name);
  if (!found) return NOT_FOUND;
  const answers: DnsAnswer[] = [];
  if (question.type === QTYPE.A || question.type === QTYPE.ANY) for (const ip of found.v4) answers.push({ type: QTYPE.A, ttl: NAME_TTL_S, data: ip });
  if (question.type === QTYPE.AAAA || question.type === QTYPE.ANY) for (const ip of found.v6) answers.push({ type: QTYPE.AAAA, ttl: NAME_TTL_S, data: ip });
  // Any other type of a kvnet name gets NODATA: forwarding it would tell the outside the name.
  return { kind: 'records', answers };
}
