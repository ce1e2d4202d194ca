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
import { NAME_TTL_S, type NameTable } from './names.ts';

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
  readonly networks: ReadonlyMap<string, CompiledNetwork>;
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

function add(map: Map<string, Addresses>, name: string, ip: string | undefined, ip6: string | undefined): void {
  const key = name.toLowerCase();
  let a = map.get(key);
  if (!a) map.set(key, (a = { v4: [], v6: [] }));
  if (ip && !a.v4.includes(ip)) a.v4.push(ip);
  if (ip6 && !a.v6.includes(ip6)) a.v6.push(ip6);
}

/** Compiles a table (already validated) for lookups. Records with an unusable address are skipped. */
export function compileTable(table: NameTable): CompiledTable {
  const networks = new Map<string, CompiledNetwork>();
  for (const n of table.networks) {
    const names = new Map<string, Addresses>();
    const aliases = new Map<string, Addresses>();
    const ptr = new Map<string, string>();
    const netName = n.name.toLowerCase();
    for (const r of n.records) {
      // An endpoint of an IPv6-only network has its IPv6 address in `ip` (layout.ts): it gets AAAA only.
      const first = canonicalIp(r.ip);
      const ip = first && !first.includes(':') ? first : undefined;
      const second = r.ip6 !== undefined ? canonicalIp(r.ip6) : undefined;
      const ip6 = second && second.includes(':') ? second : first?.includes(':') ? first : undefined;
      if (!ip && !ip6) continue;
      add(names, r.name, ip, ip6);
      for (const alias of r.aliases) add(aliases, alias, ip, ip6);
      // A name that cannot go on the wire (a label over 63 bytes: names may be 64 characters) gets no PTR.
      const target = `${r.name.toLowerCase()}.${netName}.`;
      if (!encodable(target)) continue;
      if (ip && !ptr.has(ip)) ptr.set(ip, target);
      if (ip6 && !ptr.has(ip6)) ptr.set(ip6, target);
    }
    networks.set(n.id, { id: n.id, name: netName, internal: n.internal, names, aliases, ptr });
  }
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
