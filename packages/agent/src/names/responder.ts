/**
 * One query in, at most one reply out. {@link planReply} is pure: it decides from the packet, the table
 * and who asked; {@link Responder} carries the decision out (forwarding upstream when told to) and counts.
 *
 * | packet | reply |
 * |---|---|
 * | shorter than a header, or a response (QR set) | none (dropped: never answer an answer, no reflection loops) |
 * | opcode other than QUERY | NOTIMP, header only |
 * | not exactly one question, or a question that cannot be read (truncated, bad label, pointer loop, name > 255 bytes) | FORMERR, header only |
 * | a kvnet name in the asker's scope | its records, authoritative, TTL {@link NAME_TTL_S} (none of that type: NOERROR, no answer) |
 * | anything else, asker may forward | the upstream's reply with the client's id, or SERVFAIL when no upstream answers |
 * | anything else, asker on internal networks only | REFUSED, RA clear |
 *
 * Why REFUSED for internal-only askers: it says "not for you" without claiming the name does not exist
 * (an NXDOMAIN may be cached negatively, and would be a lie for a name that exists outside). Docker's
 * embedded resolver, when it gets REFUSED from its upstream, tries its next server and then answers the
 * container SERVFAIL — what Docker itself answers an internal-only container for an outside name
 * (moby v28.5.2 `Resolver.forwardExtDNS`).
 */

import { encodeBareReply, encodeReply, MAX_MESSAGE_BYTES, MAX_UDP_REPLY_BYTES, OPCODE_QUERY, parseQuery, QCLASS_IN, RCODE, readHeader, type DnsAnswer, type DnsQuery } from './dns-codec.ts';
import { EMPTY_TABLE, lookup, scopeFor, type CompiledTable, type ListenerRef } from './name-lookup.ts';
import type { Forwarder } from './upstream.ts';

export interface QueryOrigin {
  readonly listener: ListenerRef;
  /** Source address of the query. */
  readonly source: string;
  readonly transport: 'udp' | 'tcp';
}

export type Outcome = 'answered' | 'nodata' | 'forwarded' | 'refused' | 'servfail' | 'formerr' | 'notimp' | 'dropped';

export type ReplyPlan =
  | { readonly kind: 'drop' }
  | { readonly kind: 'reply'; readonly outcome: Outcome; readonly bytes: Buffer }
  /** Forward the packet; on failure answer `query` SERVFAIL, when busy REFUSED. */
  | { readonly kind: 'forward'; readonly query: DnsQuery };

/** Largest reply for a transport: 512 bytes over UDP (no EDNS is echoed), the protocol maximum over TCP. */
export function replyLimit(transport: 'udp' | 'tcp'): number {
  return transport === 'udp' ? MAX_UDP_REPLY_BYTES : MAX_MESSAGE_BYTES;
}

/**
 * Decides what to do with one packet. Never throws. `arrange` orders the answers (identity by default;
 * the responder shuffles, so an alias shared by several endpoints spreads load, as Docker's does).
 */
export function planReply(table: CompiledTable, packet: Buffer, origin: QueryOrigin, arrange: (answers: readonly DnsAnswer[]) => readonly DnsAnswer[] = (a) => a): ReplyPlan {
  const header = readHeader(packet);
  if (!header || header.qr) return { kind: 'drop' };
  if (header.opcode !== OPCODE_QUERY) return { kind: 'reply', outcome: 'notimp', bytes: encodeBareReply(header, RCODE.NOTIMP) };
  let query: DnsQuery;
  try {
    query = parseQuery(packet);
  } catch {
    return { kind: 'reply', outcome: 'formerr', bytes: encodeBareReply(header, RCODE.FORMERR) };
  }
  const scope = scopeFor(table, origin.listener, origin.source);
  if (query.question.class === QCLASS_IN) {
    const found = lookup(scope, query.question);
    if (found.kind === 'records') {
      return {
        kind: 'reply',
        outcome: found.answers.length > 0 ? 'answered' : 'nodata',
        bytes: encodeReply(query, { rcode: RCODE.NOERROR, aa: true, ra: scope.forward, answers: arrange(found.answers), maxBytes: replyLimit(origin.transport) }),
      };
    }
  }
  if (!scope.forward) return { kind: 'reply', outcome: 'refused', bytes: encodeReply(query, { rcode: RCODE.REFUSED, ra: false, maxBytes: replyLimit(origin.transport) }) };
  return { kind: 'forward', query };
}

function shuffled<T>(xs: readonly T[]): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Answers packets from the current table, forwarding through `forwarder`; counts outcomes. */
export class Responder {
  private table: CompiledTable = EMPTY_TABLE;
  private readonly counts: Record<Outcome, number> = { answered: 0, nodata: 0, forwarded: 0, refused: 0, servfail: 0, formerr: 0, notimp: 0, dropped: 0 };

  constructor(private readonly forwarder: Forwarder) {}

  /** Takes effect for every packet handled from now on. */
  setTable(table: CompiledTable): void {
    this.table = table;
  }

  counters(): Readonly<Record<Outcome, number>> {
    return { ...this.counts };
  }

  /** The reply to send back, or undefined for none. Never rejects: an unexpected error is answered SERVFAIL. */
  async handle(packet: Buffer, origin: QueryOrigin): Promise<Buffer | undefined> {
    try {
      return await this.handleOrThrow(packet, origin);
    } catch {
      this.counts.servfail++;
      const h = readHeader(packet);
      return h && !h.qr ? encodeBareReply(h, RCODE.SERVFAIL) : undefined;
    }
  }

  private async handleOrThrow(packet: Buffer, origin: QueryOrigin): Promise<Buffer | undefined> {
    const plan = planReply(this.table, packet, origin, shuffled);
    if (plan.kind === 'drop') {
      this.counts.dropped++;
      return undefined;
    }
    if (plan.kind === 'reply') {
      this.counts[plan.outcome]++;
      return plan.bytes;
    }
    const result = await this.forwarder.forward(packet, origin.transport);
    if (result.kind === 'answer') {
      this.counts.forwarded++;
      return result.reply;
    }
    const rcode = result.kind === 'busy' ? RCODE.REFUSED : RCODE.SERVFAIL;
    this.counts[result.kind === 'busy' ? 'refused' : 'servfail']++;
    return encodeReply(plan.query, { rcode, ra: true, maxBytes: replyLimit(origin.transport) });
  }

}
