/** Opens the backend a `--cluster-store` URL names. */

import { parseDurationMs } from './duration.ts';
import { InvalidStoreUrlError } from './errors.ts';
import { parseStoreUrl } from './store-url.ts';
import type { KVStore, StoreOptions } from './store.ts';

/**
 * Opens a store. Server backends connect lazily: opening never fails because a server is down;
 * calls then fail with `StoreUnavailableError` within `timeoutMs` and succeed once it is back. The
 * local backend opens (and creates) its database file here.
 */
export async function openStore(url: string, options: StoreOptions = {}): Promise<KVStore> {
  const address = parseStoreUrl(url);
  switch (address.backend) {
    case 'etcd':
      return (await import('./etcd-store.ts')).openEtcdStore(address, options);
    case 'consul':
      return (await import('./consul-store.ts')).openConsulStore(address, options);
    case 'zookeeper':
      return (await import('./zookeeper-store.ts')).openZookeeperStore(address, options);
    case 'local':
      return (await import('./local-store.ts')).openLocalStore(address, options);
  }
}

/**
 * Parses `--cluster-store-opt` values (`key=value`), the keys Docker used plus kvnet's own:
 * `kv.cacertfile`, `kv.certfile`, `kv.keyfile`, `kv.insecure`, `kv.token`, `kv.username`,
 * `kv.password`, `kv.timeout` (a duration, `10s` or `1500ms`; a bare number is milliseconds),
 * `kv.maxwatches` (Consul: watches one client holds at most, 8–100000; raise it with the server's
 * `limits.http_max_conns_per_client`), `kv.watchrate` (Consul: keys per second one client's watches
 * read at most during a burst of writes, 10–10000000; default 500).
 */
export function parseStoreOpts(url: string, opts: readonly string[]): Pick<StoreOptions, 'tls' | 'auth' | 'timeoutMs' | 'maxWatches' | 'watchReadRate'> {
  const tls: { caFile?: string; certFile?: string; keyFile?: string; insecureSkipVerify?: boolean } = {};
  const auth: { token?: string; username?: string; password?: string } = {};
  let timeoutMs: number | undefined;
  let maxWatches: number | undefined;
  let watchReadRate: number | undefined;
  for (const opt of opts) {
    const eq = opt.indexOf('=');
    if (eq <= 0) throw new InvalidStoreUrlError(url, `store option "${opt}" is not KEY=VALUE`);
    const key = opt.slice(0, eq).trim();
    const value = opt.slice(eq + 1).trim();
    switch (key) {
      case 'kv.cacertfile':
        tls.caFile = value;
        break;
      case 'kv.certfile':
        tls.certFile = value;
        break;
      case 'kv.keyfile':
        tls.keyFile = value;
        break;
      case 'kv.insecure':
        tls.insecureSkipVerify = value === 'true' || value === '1';
        break;
      case 'kv.token':
        auth.token = value;
        break;
      case 'kv.username':
        auth.username = value;
        break;
      case 'kv.password':
        auth.password = value;
        break;
      case 'kv.timeout': {
        const n = parseDurationMs(value, 'ms');
        if (n === undefined || n < 100 || n > 600_000) {
          throw new InvalidStoreUrlError(url, `kv.timeout must be a duration between 100ms and 10m (e.g. 10s, 1500ms), got "${value}"`);
        }
        timeoutMs = Math.round(n);
        break;
      }
      case 'kv.maxwatches': {
        const n = /^\d{1,6}$/.test(value) ? Number(value) : NaN;
        if (!(n >= 8 && n <= 100_000)) throw new InvalidStoreUrlError(url, `kv.maxwatches must be a whole number between 8 and 100000, got "${value}"`);
        maxWatches = n;
        break;
      }
      case 'kv.watchrate': {
        const n = /^\d{1,8}$/.test(value) ? Number(value) : NaN;
        if (!(n >= 10 && n <= 10_000_000)) throw new InvalidStoreUrlError(url, `kv.watchrate must be a whole number of keys per second between 10 and 10000000, got "${value}"`);
        watchReadRate = n;
        break;
      }
      default:
        throw new InvalidStoreUrlError(
          url,
          `unknown store option "${key}" (known: kv.cacertfile, kv.certfile, kv.keyfile, kv.insecure, kv.token, kv.username, kv.password, kv.timeout, kv.maxwatches, kv.watchrate)`,
        );
    }
  }
  return {
    ...(Object.keys(tls).length > 0 ? { tls } : {}),
    ...(Object.keys(auth).length > 0 ? { auth } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(maxWatches !== undefined ? { maxWatches } : {}),
    ...(watchReadRate !== undefined ? { watchReadRate } : {}),
  };
}
