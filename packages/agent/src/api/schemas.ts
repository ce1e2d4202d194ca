/**
 * Input validation of the local API (pure). Every refusal is an {@link InvalidInputError} whose
 * message names the field and the value, e.g. `invalid subnet "10.0.0.0/33": is not an IPv4 CIDR`.
 */

import { z } from 'zod';
import { InvalidInputError } from '../errors.ts';
import { parseCidr, parseIpv4 } from '../ipv4.ts';
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
const cidr = z.string().refine((s) => {
  const c = parseCidr(s);
  return c !== undefined && c.prefixLength <= 30;
}, { message: 'is not an IPv4 CIDR of /30 or larger (e.g. 10.0.1.0/24)' });
const ip = z.string().refine((s) => parseIpv4(s) !== undefined, { message: 'is not an IPv4 address (e.g. 10.0.1.2)' });
const stringMap = z.record(z.string().regex(LABEL_KEY, 'is not a valid key'), z.string().max(4096));

export const createNetworkSchema = z
  .object({
    name,
    subnet: cidr.optional(),
    gateway: ip.optional(),
    ipRange: cidr.optional(),
    auxAddresses: z.record(z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'is not a valid aux address name'), ip).optional(),
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
