/**
 * The resolver's settings, checked the same way on both sides of the feed: by `startNames` (so a bad
 * flag fails the agent at start, naming the value) and by the resolver process (which trusts nothing
 * it reads from a socket).
 */

import { isIPv4 } from 'node:net';
import { InvalidConfigError } from '../errors.ts';
import { DEFAULT_RESOLVER_ADDRESS, type ResolverSettings } from './names.ts';
import { parseUpstream } from './upstream.ts';

export const DEFAULT_RESOLV_CONF = '/etc/resolv.conf';

/** Fills defaults and checks every field; throws `InvalidConfigError` naming the field and the value. */
export function checkSettings(value: Partial<Record<keyof ResolverSettings, unknown>>): ResolverSettings {
  const address = value.address ?? DEFAULT_RESOLVER_ADDRESS;
  const upstreams = value.upstreams ?? [];
  const resolvConf = value.resolvConf ?? DEFAULT_RESOLV_CONF;
  const hostListener = value.hostListener ?? false;
  if (typeof address !== 'string' || !isIPv4(address) || address === '0.0.0.0' || address === '255.255.255.255' || Number(address.split('.')[0]) >= 224) {
    throw new InvalidConfigError(`DNS resolver address ${JSON.stringify(address)} is not a unicast IPv4 address (default ${DEFAULT_RESOLVER_ADDRESS})`);
  }
  if (!Array.isArray(upstreams) || !upstreams.every((u) => typeof u === 'string')) throw new InvalidConfigError('DNS upstreams must be a list of ip[:port] strings');
  for (const u of upstreams as string[]) parseUpstream(u);
  if (typeof resolvConf !== 'string' || !resolvConf.startsWith('/')) throw new InvalidConfigError(`DNS resolv.conf path ${JSON.stringify(resolvConf)} is not absolute`);
  if (typeof hostListener !== 'boolean') throw new InvalidConfigError(`DNS hostListener ${JSON.stringify(hostListener)} is not true or false`);
  return { address, upstreams: [...(upstreams as string[])], resolvConf, hostListener };
}
