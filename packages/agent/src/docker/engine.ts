/**
 * A minimal Docker Engine API client over the local docker socket: only what the plugin needs to
 * learn what the plugin protocol does not say (the name of a network — CreateNetwork carries only its
 * id). Version-less paths, so any Engine API version the daemon speaks is used.
 */

import { KvnetError } from '@kvnet/store/errors';
import { DEFAULT_DOCKER_SOCKET } from '../config.ts';
import { unixRequest } from '../unix-http.ts';

/** One Engine API request's budget. */
export const ENGINE_REQUEST_TIMEOUT_MS = 10_000;

export class DockerEngineError extends KvnetError {
  readonly code = 'KVNET_DOCKER_ENGINE';
  readonly kind = 'unavailable';
  constructor(
    message: string,
    /** HTTP status, when the daemon answered. */
    readonly status?: number,
  ) {
    super(message);
  }
}

export interface EngineNetwork {
  Id: string;
  Name: string;
  Driver: string;
  Scope: string;
  Internal?: boolean;
  Labels?: Record<string, string> | null;
  IPAM?: { Driver?: string; Options?: Record<string, string> | null } | null;
  /** Containers attached (only in GET /networks/<id>): container id → endpoint. */
  Containers?: Record<string, { Name: string; EndpointID: string; MacAddress?: string; IPv4Address?: string }> | null;
}

/** A container as `GET /containers/json` lists it (dockerd's snapshot: no container lock is taken). */
export interface EngineContainer {
  Id: string;
  /** With a leading "/". */
  Names: string[];
  State: string;
  NetworkSettings?: { Networks?: Record<string, EngineEndpointSettings | null> | null } | null;
}

/** A container's settings on one network (the container list leaves out `Aliases` and `DNSNames`; inspect has them). */
export interface EngineEndpointSettings {
  NetworkID?: string;
  EndpointID?: string;
  /** `--network-alias` / `docker network connect --alias` (20.10 adds the short container id for user-defined networks). */
  Aliases?: string[] | null;
  /** Docker ≥ 25: every name its embedded resolver answers for the endpoint (name, aliases, short id, hostname). */
  DNSNames?: string[] | null;
}

/** The names a container's endpoint on one network answers to besides the container's name (Docker's own rule per version). */
export function containerAliases(settings: EngineEndpointSettings | null | undefined): string[] {
  return [...new Set([...(settings?.Aliases ?? []), ...(settings?.DNSNames ?? [])])];
}

export class DockerEngine {
  constructor(readonly socketPath: string = DEFAULT_DOCKER_SOCKET) {}

  /** One Engine API call; resolves with status and parsed JSON (undefined for an empty body). */
  private async call(method: string, path: string, signal?: AbortSignal, payload?: unknown): Promise<{ status: number; body: unknown }> {
    try {
      return await unixRequest({ socketPath: this.socketPath, method, path, body: payload, timeoutMs: ENGINE_REQUEST_TIMEOUT_MS, ...(signal ? { signal } : {}) });
    } catch (err) {
      throw new DockerEngineError(`docker ${method} ${path} on ${this.socketPath}: ${(err as Error).message}`);
    }
  }

  /** The engine's version (`GET /version` → Version, e.g. `28.5.2`). */
  async version(signal?: AbortSignal): Promise<string> {
    const r = await this.call('GET', '/version', signal);
    const v = (r.body as { Version?: unknown } | undefined)?.Version;
    if (r.status !== 200 || typeof v !== 'string') throw new DockerEngineError(`docker GET /version: HTTP ${r.status} ${JSON.stringify(r.body)}`, r.status);
    return v;
  }

  /** The network, or undefined when dockerd does not (yet) know it. */
  async inspectNetwork(id: string, signal?: AbortSignal): Promise<EngineNetwork | undefined> {
    const r = await this.call('GET', `/networks/${encodeURIComponent(id)}`, signal);
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw new DockerEngineError(`docker GET /networks/${id}: HTTP ${r.status} ${JSON.stringify(r.body)}`, r.status);
    return r.body as EngineNetwork;
  }

  /** Networks of one driver. */
  async listNetworks(driver: string, signal?: AbortSignal): Promise<EngineNetwork[]> {
    const filters = encodeURIComponent(JSON.stringify({ driver: [driver] }));
    const r = await this.call('GET', `/networks?filters=${filters}`, signal);
    if (r.status !== 200) throw new DockerEngineError(`docker GET /networks: HTTP ${r.status} ${JSON.stringify(r.body)}`, r.status);
    // the driver filter matches by substring on some versions: filter exactly
    return (r.body as EngineNetwork[]).filter((n) => n.Driver === driver);
  }

  /**
   * Containers (running or not) matching Engine API filters, e.g. `{ network: ['multi'] }`. Safe to call
   * while dockerd waits for this plugin: the list is served from dockerd's snapshot, whereas
   * `GET /containers/<id>/json` takes the container's lock, which dockerd holds while it starts it.
   */
  async listContainers(filters: Record<string, string[]>, signal?: AbortSignal): Promise<EngineContainer[]> {
    const r = await this.call('GET', `/containers/json?all=1&filters=${encodeURIComponent(JSON.stringify(filters))}`, signal);
    if (r.status !== 200) throw new DockerEngineError(`docker GET /containers/json: HTTP ${r.status} ${JSON.stringify(r.body)}`, r.status);
    return r.body as EngineContainer[];
  }

  /**
   * One container's settings per network (`GET /containers/<id>/json`), undefined when dockerd does not
   * know it. Unlike the container list it carries `Aliases` and `DNSNames`; it takes the container's
   * lock, so never call it from a plugin call dockerd makes while starting that container.
   */
  async containerNetworks(id: string, signal?: AbortSignal): Promise<Record<string, EngineEndpointSettings | null> | undefined> {
    const r = await this.call('GET', `/containers/${encodeURIComponent(id)}/json`, signal);
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw new DockerEngineError(`docker GET /containers/${id.slice(0, 12)}/json: HTTP ${r.status} ${JSON.stringify(r.body)}`, r.status);
    return (r.body as { NetworkSettings?: { Networks?: Record<string, EngineEndpointSettings | null> | null } | null }).NetworkSettings?.Networks ?? {};
  }

  /** Creates a network; resolves with its id. The error carries dockerd's message (e.g. a plugin's `Err`). */
  async createNetwork(spec: Record<string, unknown>, signal?: AbortSignal): Promise<string> {
    const r = await this.call('POST', '/networks/create', signal, spec);
    if (r.status !== 201 && r.status !== 200) {
      const msg = (r.body as { message?: string } | undefined)?.message ?? JSON.stringify(r.body);
      throw new DockerEngineError(`docker network create ${String(spec.Name)}: ${msg}`, r.status);
    }
    return (r.body as { Id: string }).Id;
  }

  /** Removes a network; a network dockerd does not know is not an error. */
  async removeNetwork(id: string, signal?: AbortSignal): Promise<void> {
    const r = await this.call('DELETE', `/networks/${encodeURIComponent(id)}`, signal);
    if (r.status === 404 || r.status === 204 || r.status === 200) return;
    const msg = (r.body as { message?: string } | undefined)?.message ?? JSON.stringify(r.body);
    throw new DockerEngineError(`docker network rm ${id.slice(0, 12)}: ${msg}`, r.status);
  }
}
