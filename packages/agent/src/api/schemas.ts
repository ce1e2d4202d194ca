/**
 * Input validation of the local API (pure). Every refusal is an {@link InvalidInputError} whose
 * message names the field and the value, e.g. `invalid subnet "10.0.0.0/33": is not an IPv4 CIDR`.
 */

import { parseInterfaceAddress, parseIp } from '@kvnet/netaddr';
import { z } from 'zod';
import { InvalidInputError } from '../errors.ts';
import { parseIpv4 } from '../ipv4.ts';
import { NAME_MAX_CHARS, NAME_PATTERN } from '../layout.ts';

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** Aliases one endpoint may carry (`kvnet network connect --alias`, repeatable). */
export const MAX_ALIASES = 32;
const LABEL_KEY = /^[A-Za-z0-9_.\-/]{1,255}$/;

const name = z
  .string()
  .refine((s) => s.length <= NAME_MAX_CHARS && NAME_PATTERN.test(s), {
    message: `must start with a letter or digit and contain only letters, digits, "_", "." and "-" (at most ${NAME_MAX_CHARS})`,
  });
const ip = z.string().refine((s) => parseIpv4(s) !== undefined, { message: 'is not an IPv4 address (e.g. 10.0.1.2)' });
/** Smallest IPv6 subnet a network may have (the data plane's bound: room for a gateway and an endpoint). */
const IPV6_SUBNET_MAX_PREFIX = 126;
/** An IPv4 CIDR of /30 or larger, or an IPv6 one of /126 or larger (host bits: the IPAM names the network meant). */
const isCidr = (s: string): boolean => {
  const a = parseInterfaceAddress(s);
  return a !== undefined && a.prefix <= (a.ip.family === 4 ? 30 : IPV6_SUBNET_MAX_PREFIX);
};
const CIDR_MESSAGE = `is not an IPv4 CIDR of /30 or larger (e.g. 10.0.1.0/24) or an IPv6 CIDR of /${IPV6_SUBNET_MAX_PREFIX} or larger (e.g. fd00:1::/64)`;
const isAnyIp = (s: string): boolean => parseIp(s) !== undefined;
const ANY_IP_MESSAGE = 'is not an IPv4 or IPv6 address (e.g. 10.0.1.2, fd00:1::2)';
const anyIp = z.string().refine(isAnyIp, { message: ANY_IP_MESSAGE });
const ip6 = z.string().refine((s) => parseIp(s)?.family === 6, { message: 'is not an IPv6 address (e.g. fd00:1::2)' });
/**
 * One value, or one per family (`--subnet 10.20.0.0/24 --subnet fd00:20::/64`); each checked with
 * `check`, the issue on the value itself (or its index) so the message names it.
 */
const oneOrTwo = (check: (s: string) => boolean, message: string) =>
  z.union([z.string(), z.array(z.string()).min(1).max(2)]).superRefine((v, ctx) => {
    const list = typeof v === 'string' ? [v] : v;
    for (const [i, s] of list.entries()) if (!check(s)) ctx.addIssue({ code: 'custom', message, path: typeof v === 'string' ? [] : [i] });
  });
/** Linux's largest MTU; the lower bound depends on the family and is checked at creation. */
const MAX_MTU = 65535;
const stringMap = z.record(z.string().regex(LABEL_KEY, 'is not a valid key'), z.string().max(4096));

export const createNetworkSchema = z
  .object({
    name,
    subnet: oneOrTwo(isCidr, CIDR_MESSAGE).optional(),
    gateway: oneOrTwo(isAnyIp, ANY_IP_MESSAGE).optional(),
    ipRange: oneOrTwo(isCidr, CIDR_MESSAGE).optional(),
    auxAddresses: z.record(z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'is not a valid aux address name'), anyIp).optional(),
    /** An IPv6 pool too (the cluster's default /64 unless an IPv6 subnet is given). */
    ipv6: z.boolean().optional(),
    /** false: no IPv4 pool (IPv6-only). */
    ipv4: z.boolean().optional(),
    /** MTU of the network on every host (default: the creating host's underlay MTU − 50, or --default-mtu). */
    mtu: z.number().int('is not an integer').positive('must be positive').max(MAX_MTU, `is above ${MAX_MTU}`).optional(),
    internal: z.boolean().optional(),
    labels: stringMap.optional(),
    options: stringMap.optional(),
  })
  .strict();
export type CreateNetworkInput = z.infer<typeof createNetworkSchema>;

export const connectSchema = z
  .object({
    netns: z.string().refine((s) => s.startsWith('/') && !/[\s"'\\]/.test(s) && s.length <= 4096, {
      message: 'must be an absolute path without whitespace or quotes (e.g. /run/netns/c1)',
    }),
    name: name.optional(),
    aliases: z.array(name).max(MAX_ALIASES, `at most ${MAX_ALIASES} aliases`).optional(),
    ip: ip.optional(),
    /** A specific IPv6 address (Docker's --ip6). */
    ip6: ip6.optional(),
    ifname: z.string().regex(IFNAME, 'must be 1-15 letters, digits, "_", "." or "-"').optional(),
  })
  .strict();
export type ConnectInput = z.infer<typeof connectSchema>;

function valueAt(body: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = body;
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

/** Parses `body` with `schema`, or throws an InvalidInputError naming the first bad field and its value. */
export function validate<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new InvalidInputError(`request body must be a JSON object, got ${JSON.stringify(body) ?? 'nothing'}`);
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const problems = r.error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
    // For record keys zod reports the key itself as the last path element.
    const field = issue.path.map(String).join('.') || '(body)';
    const value = valueAt(body, issue.path);
    if (value === undefined) return `missing ${field}: ${issue.message}`;
    const shown = issue.code === 'invalid_key' ? JSON.stringify(issue.path.at(-1)) : JSON.stringify(value);
    return `invalid ${field} ${shown}: ${issue.message}`;
  });
  throw new InvalidInputError(problems.join('; '));
}

// ---- the CNI plugin's calls (/v1/cni/…) ----

/** CNI's rule for container ids and network configuration names (SPEC.md, "Parameters"). */
const CNI_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const CNI_ID_MAX_CHARS = 1024;
const cniId = z.string().refine((s) => s.length <= CNI_ID_MAX_CHARS && CNI_ID.test(s), {
  message: `must start with a letter or digit and contain only letters, digits, "_", "." and "-" (at most ${CNI_ID_MAX_CHARS})`,
});
const cniIfname = z.string().refine((s) => IFNAME.test(s) && s !== '.' && s !== '..', { message: 'must be 1-15 letters, digits, "_", "." or "-"' });
/** A network by name, id or id prefix. */
const networkRef = z.string().min(1).max(NAME_MAX_CHARS);

/** One CNI attachment of this host: the kvnet network, `CNI_CONTAINERID`, `CNI_IFNAME`. */
export const cniAttachmentRefSchema = z
  .object({
    network: networkRef,
    containerId: cniId,
    ifname: cniIfname,
  })
  .strict();
export type CniAttachmentRefInput = z.infer<typeof cniAttachmentRefSchema>;

/** `POST /v1/cni/attachments`: CNI ADD. */
export const cniAttachSchema = z
  .object({
    network: networkRef,
    containerId: cniId,
    ifname: cniIfname,
    netns: connectSchema.shape.netns,
    /** The CNI network configuration's name. */
    netconf: cniId,
    name: name.optional(),
    ip: ip.optional(),
  })
  .strict();
export type CniAttachInput = z.infer<typeof cniAttachSchema>;

/** `POST /v1/cni/gc`: CNI GC — every attachment of `netconf` on `network` on this host not listed goes. */
export const cniGcSchema = z
  .object({
    network: networkRef,
    netconf: cniId,
    valid: z.array(z.object({ containerId: z.string(), ifname: z.string() }).strict()).max(1_000_000),
  })
  .strict();
export type CniGcInput = z.infer<typeof cniGcSchema>;
