/**
 * Parsing of `--cluster-store` URLs:
 *
 * | form | backend |
 * |---|---|
 * | `consul://h1:8500[,h2:8500]/prefix` | Consul KV (port 8500 by default) |
 * | `etcd://h1:2379[,h2:2379]/prefix` | etcd v3 API (port 2379 by default) |
 * | `zk://h1:2181[,h2:2181]/prefix` | ZooKeeper (port 2181 by default) |
 * | `local:///var/lib/kvnet/store.db` | embedded SQLite file |
 *
 * The prefix (default `kvnet`) isolates clusters that share one server. Credentials may be given as
 * `user:password@` in front of the first host; they never appear in {@link StoreAddress.redacted}.
 */

import { InvalidStoreUrlError } from './errors.ts';
import { validatePrefix } from './keys.ts';
import type { StoreBackendName } from './store.ts';

export const DEFAULT_PREFIX = 'kvnet';
export const DEFAULT_LOCAL_PATH = '/var/lib/kvnet/store.db';

const SCHEMES: Record<string, { backend: StoreBackendName; port: number }> = {
  consul: { backend: 'consul', port: 8500 },
  etcd: { backend: 'etcd', port: 2379 },
  zk: { backend: 'zookeeper', port: 2181 },
  zookeeper: { backend: 'zookeeper', port: 2181 },
};

export interface StoreHost {
  readonly host: string;
  readonly port: number;
}

export interface StoreAddress {
  readonly backend: StoreBackendName;
  /** Servers to try, in the order given. Empty for `local`. */
  readonly hosts: readonly StoreHost[];
  /** Key prefix on the server (no leading or trailing `/`); `''` for `local`. */
  readonly prefix: string;
  /** Database file, for `local` only. */
  readonly path?: string;
  readonly username?: string;
  readonly password?: string;
  /** The URL without credentials, normalised; safe for logs and messages. */
  readonly redacted: string;
}

/** Parses a store URL; throws {@link InvalidStoreUrlError} naming the URL and what is wrong. */
export function parseStoreUrl(url: string): StoreAddress {
  const m = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(url.trim());
  if (!m) {
    throw new InvalidStoreUrlError(url, 'expected SCHEME://HOST[:PORT][,HOST[:PORT]...]/PREFIX or local:///PATH');
  }
  const scheme = m[1]!.toLowerCase();
  const rest = m[2]!;

  if (scheme === 'local') {
    const path = rest === '' ? DEFAULT_LOCAL_PATH : rest;
    if (!path.startsWith('/')) {
      throw new InvalidStoreUrlError(url, 'the local store needs an absolute file path, as in local:///var/lib/kvnet/store.db');
    }
    if (path.endsWith('/')) throw new InvalidStoreUrlError(url, 'the local store path names a directory, not a file');
    return { backend: 'local', hosts: [], prefix: '', path, redacted: `local://${path}` };
  }

  const spec = SCHEMES[scheme];
  if (!spec) {
    throw new InvalidStoreUrlError(url, `unknown backend "${scheme}" (use consul, etcd, zk or local)`);
  }

  const slash = rest.indexOf('/');
  let authority = slash === -1 ? rest : rest.slice(0, slash);
  let prefix = slash === -1 ? '' : rest.slice(slash + 1);
  if (prefix.includes('?') || prefix.includes('#')) {
    throw new InvalidStoreUrlError(url, 'query strings and fragments are not supported; pass options with --cluster-store-opt');
  }
  prefix = prefix.replace(/\/+$/, '');
  if (prefix === '') prefix = DEFAULT_PREFIX;
  try {
    validatePrefix(prefix);
  } catch (err) {
    throw new InvalidStoreUrlError(url, `bad prefix: ${(err as Error).message}`);
  }

  let username: string | undefined;
  let password: string | undefined;
  const at = authority.lastIndexOf('@');
  if (at !== -1) {
    const userinfo = authority.slice(0, at);
    authority = authority.slice(at + 1);
    const colon = userinfo.indexOf(':');
    username = decodeURIComponent(colon === -1 ? userinfo : userinfo.slice(0, colon));
    password = colon === -1 ? undefined : decodeURIComponent(userinfo.slice(colon + 1));
  }
  if (authority === '') throw new InvalidStoreUrlError(url, 'no server address given');

  const hosts = authority.split(',').map((part) => parseHost(url, part, spec.port));
  const redacted = `${scheme}://${hosts.map(formatHost).join(',')}/${prefix}`;
  return {
    backend: spec.backend,
    hosts,
    prefix,
    redacted,
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
  };
}

function parseHost(url: string, part: string, defaultPort: number): StoreHost {
  if (part === '') throw new InvalidStoreUrlError(url, 'empty server address in the host list');
  let host: string;
  let portText: string | undefined;
  if (part.startsWith('[')) {
    const close = part.indexOf(']');
    if (close === -1) throw new InvalidStoreUrlError(url, `unterminated IPv6 address in "${part}"`);
    host = part.slice(1, close);
    const after = part.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) throw new InvalidStoreUrlError(url, `bad server address "${part}"`);
    portText = after === '' ? undefined : after.slice(1);
  } else {
    const colon = part.lastIndexOf(':');
    host = colon === -1 ? part : part.slice(0, colon);
    portText = colon === -1 ? undefined : part.slice(colon + 1);
  }
  if (!/^[A-Za-z0-9._:-]+$/.test(host)) throw new InvalidStoreUrlError(url, `bad server host "${host}"`);
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      throw new InvalidStoreUrlError(url, `bad port "${portText}" for server "${host}"`);
    }
    port = Number(portText);
  }
  return { host, port };
}

export function formatHost(h: StoreHost): string {
  return h.host.includes(':') ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`;
}
