/**
 * Which sandbox each local Docker endpoint joined, and which of a sandbox's kvnet endpoints holds its
 * route to the resolver address. Docker's Join is the only place the plugin learns a container's
 * sandbox (its `SandboxKey`); the store record has no netns for Docker endpoints, and this is host-local
 * knowledge, so it lives in the state dir (`docker-sandboxes.json`, written atomically on every change)
 * and survives agent restarts: a restarted agent still groups a container's endpoints into one sandbox
 * and still knows who holds the route.
 *
 * One route per sandbox: dockerd installs a Join answer's connected route with netlink's exclusive
 * create and fails the whole join if it exists already (README.md in this folder), so the first joined
 * endpoint of a sandbox holds it and later ones get none. When the holder leaves, another joined
 * endpoint of the sandbox takes it over ({@link DockerSandboxes.leave} says which; the caller moves the
 * route in the kernel).
 */

import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const DOCKER_SANDBOXES_FILE = 'docker-sandboxes.json';
const FILE_VERSION = 1;

/** One joined endpoint. */
export interface JoinedEndpoint {
  /** Docker's SandboxKey (a netns bind mount, e.g. /var/run/docker/netns/<id>). */
  readonly sandbox: string;
  /** Whether this endpoint's interface carries the sandbox's route to the resolver address. */
  readonly route: boolean;
  /** Join order within this agent's state (the next holder is the earliest joined). */
  readonly seq: number;
}

interface FileData {
  version: number;
  endpoints: Record<string, JoinedEndpoint>;
}

/** What a Leave changed: the sandbox, and the endpoint that must now carry the route, if the leaver held it. */
export interface LeaveResult {
  readonly sandbox: string;
  readonly heldRoute: boolean;
  /** The new route holder (another joined endpoint of the sandbox), when the leaver held the route. */
  readonly nextHolder?: string;
}

export class DockerSandboxes {
  private readonly file: string;
  private endpoints: Map<string, JoinedEndpoint>;
  private seq: number;

  /** Loads `<stateDir>/docker-sandboxes.json` (an unreadable file is started afresh: it only costs the grouping of endpoints joined before). */
  constructor(stateDir: string, onUnreadable?: (err: Error) => void) {
    this.file = join(stateDir, DOCKER_SANDBOXES_FILE);
    this.endpoints = new Map();
    try {
      const data = JSON.parse(readFileSync(this.file, 'utf8')) as Partial<FileData>;
      for (const [eid, e] of Object.entries(data.endpoints ?? {})) {
        if (e && typeof e.sandbox === 'string' && typeof e.route === 'boolean' && typeof e.seq === 'number') this.endpoints.set(eid, { sandbox: e.sandbox, route: e.route, seq: e.seq });
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') onUnreadable?.(err as Error);
    }
    this.seq = Math.max(0, ...[...this.endpoints.values()].map((e) => e.seq));
  }

  /** The sandbox an endpoint joined, if it did. */
  sandboxOf(endpointId: string): string | undefined {
    return this.endpoints.get(endpointId)?.sandbox;
  }

  /** Whether the endpoint holds its sandbox's route. */
  holdsRoute(endpointId: string): boolean {
    return this.endpoints.get(endpointId)?.route ?? false;
  }

  /**
   * Records a Join; returns true when this endpoint takes the sandbox's route (no other joined endpoint
   * of the sandbox holds it). A repeated Join of the same endpoint into the same sandbox changes nothing.
   */
  join(endpointId: string, sandbox: string): boolean {
    const had = this.endpoints.get(endpointId);
    if (had && had.sandbox === sandbox) return had.route;
    const taken = [...this.endpoints].some(([id, e]) => id !== endpointId && e.sandbox === sandbox && e.route);
    this.endpoints.set(endpointId, { sandbox, route: !taken, seq: ++this.seq });
    this.save();
    return !taken;
  }

  /** Records a Leave; undefined when the endpoint had not joined (as far as this agent knows). */
  leave(endpointId: string): LeaveResult | undefined {
    const e = this.endpoints.get(endpointId);
    if (!e) return undefined;
    this.endpoints.delete(endpointId);
    let nextHolder: string | undefined;
    if (e.route) {
      const rest = [...this.endpoints].filter(([, x]) => x.sandbox === e.sandbox).sort(([, a], [, b]) => a.seq - b.seq);
      if (rest.length > 0) {
        const [id, x] = rest[0]!;
        this.endpoints.set(id, { ...x, route: true });
        nextHolder = id;
      }
    }
    this.save();
    return { sandbox: e.sandbox, heldRoute: e.route, ...(nextHolder ? { nextHolder } : {}) };
  }

  /**
   * Forgets endpoints that no longer exist (deleted without a Leave: dockerd crashed and dropped them);
   * returns what a Leave would have, for each.
   */
  prune(exists: (endpointId: string) => boolean): LeaveResult[] {
    return [...this.endpoints.keys()].filter((id) => !exists(id)).map((id) => this.leave(id)!);
  }

  private save(): void {
    mkdirSync(join(this.file, '..'), { recursive: true, mode: 0o700 });
    const data: FileData = { version: FILE_VERSION, endpoints: Object.fromEntries([...this.endpoints].sort(([a], [b]) => (a < b ? -1 : 1))) };
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(data, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}
