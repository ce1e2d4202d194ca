/**
 * Reading the underlay interface: which interface of the host namespace holds the VTEP address, and its
 * MTU. The agent uses it for the default MTU of networks it creates (underlay MTU − VXLAN overhead) and
 * to report networks whose MTU this host cannot carry.
 */

import { canonicalIp, ipFamily, type Family } from '@kvnet/netaddr';
import { netnsLabel, netnsTargetOf } from './config.ts';
import { InvalidConfigError } from './errors.ts';
import { readJson } from './iproute2.ts';
import { parseLinks } from './kernel-state.ts';
import { overlayMtuFor } from './mtu.ts';

/** What {@link readUnderlay} found. */
export interface UnderlayInfo {
  /** The interface holding the address, e.g. `eth0`. */
  readonly ifname: string;
  /** Its MTU now. */
  readonly mtu: number;
  /** The address (canonical) and its family: the VXLAN overhead is 50 bytes over IPv4, 70 over IPv6. */
  readonly address: string;
  readonly family: Family;
  /** The largest overlay MTU it carries: `mtu` − 50 or − 70. */
  readonly overlayMtu: number;
}

/**
 * The underlay interface of a host: the one holding `address` (the VTEP) in `hostNetns` (a name under
 * /run/netns or a path; omitted: this process's namespace), or the one named `ifname`, with its MTU.
 * Throws InvalidConfigError naming the address (or name) and the namespace when there is none, and
 * CommandFailedError when `ip` cannot run there.
 */
export async function readUnderlay(options: { hostNetns?: string; address?: string; ifname?: string; signal?: AbortSignal }): Promise<UnderlayInfo> {
  const target = netnsTargetOf(options.hostNetns);
  const where = `host netns ${netnsLabel(target)}`;
  const wanted = options.address !== undefined ? canonicalIp(options.address) : undefined;
  if (options.address !== undefined && wanted === undefined) throw new InvalidConfigError('vtep', options.address, 'is not an IPv4 or IPv6 address');
  if (wanted === undefined && options.ifname === undefined) throw new InvalidConfigError('underlay', options, 'needs an address or an interface name');
  const links = parseLinks(await readJson('ip', target, ['addr', 'show'], options.signal ? { signal: options.signal } : {}));
  const link = links.find((l) => (options.ifname !== undefined ? l.name === options.ifname : l.addresses.some((a) => a.slice(0, a.lastIndexOf('/')) === wanted)));
  if (!link) {
    throw options.ifname !== undefined
      ? new InvalidConfigError('underlay', options.ifname, `no interface of that name in ${where}`)
      : new InvalidConfigError('vtep', options.address, `no interface in ${where} has this address`);
  }
  const address = wanted ?? link.addresses[0]?.slice(0, link.addresses[0].lastIndexOf('/'));
  if (address === undefined) throw new InvalidConfigError('underlay', options.ifname, `interface ${link.name} in ${where} has no IPv4 or IPv6 address`);
  const family = ipFamily(address)!;
  return { ifname: link.name, mtu: link.mtu, address, family, overlayMtu: overlayMtuFor(link.mtu, family) };
}
