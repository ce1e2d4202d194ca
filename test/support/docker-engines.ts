/**
 * Which Docker Engine a test's dockerd runs, and where its binaries are. Three are installed side by
 * side (scripts/setup.sh):
 *
 * - `28.5.2` (the default): dockerd, docker-proxy and the docker CLI built from the Go module proxy by
 *   scripts/install-docker.sh into /var/cache/kvnet/docker-28.5.2 (`KVNET_DOCKER28_DIR` points elsewhere);
 *   it runs on Debian's containerd 1.6 and runc 1.1.5;
 * - `29.8.1`: dockerd and docker-proxy from the same script (/var/cache/kvnet/docker-29.8.1,
 *   `KVNET_DOCKER29_DIR`), with runc 1.5.3 (/var/cache/kvnet/runc-v1.5.3, `KVNET_RUNC_DIR`) first in
 *   dockerd's PATH: 29 puts a `time` namespace in the OCI spec, which Debian's runc 1.1.5 rejects. Its
 *   CLI is the 28.5.2 one (29's CLI is not built; 28's speaks an API version 29 accepts);
 * - `20.10`: Debian's docker.io (/usr/sbin/dockerd, /usr/bin/docker), the last release with
 *   `--cluster-store`: only for what needs that (scope global, the built-in KV overlay anchor).
 *
 * `KVNET_DOCKER_ENGINE=29.8.1` (or `20.10`) changes the default for a whole run, e.g. to try every
 * Docker test on another engine; a test that names its engine keeps it.
 */

import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** The engines a test can ask for. */
export const DOCKER_ENGINES = ['28.5.2', '29.8.1', '20.10'] as const;
export type DockerEngineName = (typeof DOCKER_ENGINES)[number];
/** What every Docker test runs on unless it says otherwise (or `KVNET_DOCKER_ENGINE` does). */
export const DEFAULT_DOCKER_ENGINE: DockerEngineName = '28.5.2';

/** Where scripts/install-docker.sh caches its builds by default (`KVNET_CACHE_DIR`; its variables override each directory). */
const DEFAULT_CACHE_DIR = '/var/cache/kvnet';

/** One engine's binaries. */
export interface DockerEngine {
  readonly name: DockerEngineName;
  /** The dockerd binary (absolute path). */
  readonly dockerd: string;
  /** The docker CLI that fits this engine (absolute path). */
  readonly cli: string;
  /**
   * Directories put first in dockerd's PATH: dockerd looks up docker-proxy, docker-init and (through
   * containerd's shim) runc there, so without them a modern dockerd would pick Debian's 20.10 helpers.
   */
  readonly path: readonly string[];
  /** Every file that must exist for this engine to run, with the set-up step that makes it. */
  readonly files: ReadonlyArray<{ readonly file: string; readonly from: string }>;
}

function dir(variable: string, fallback: string): string {
  return process.env[variable] || join(process.env.KVNET_CACHE_DIR || DEFAULT_CACHE_DIR, fallback);
}

/** The engine for `name` (default: {@link defaultDockerEngine}). */
export function dockerEngine(name: DockerEngineName = defaultDockerEngine()): DockerEngine {
  const d28 = dir('KVNET_DOCKER28_DIR', 'docker-28.5.2');
  const built = (variable: string): string => `scripts/install-docker.sh (or ${variable})`;
  switch (name) {
    case '28.5.2':
      return {
        name,
        dockerd: join(d28, 'dockerd'),
        cli: join(d28, 'docker'),
        path: [d28],
        files: ['dockerd', 'docker-proxy', 'docker'].map((f) => ({ file: join(d28, f), from: built('KVNET_DOCKER28_DIR') })),
      };
    case '29.8.1': {
      const d29 = dir('KVNET_DOCKER29_DIR', 'docker-29.8.1');
      const runc = dir('KVNET_RUNC_DIR', 'runc-v1.5.3');
      return {
        name,
        dockerd: join(d29, 'dockerd'),
        cli: join(d28, 'docker'),
        path: [runc, d29],
        files: [
          ...['dockerd', 'docker-proxy'].map((f) => ({ file: join(d29, f), from: built('KVNET_DOCKER29_DIR') })),
          { file: join(runc, 'runc'), from: built('KVNET_RUNC_DIR') },
          { file: join(d28, 'docker'), from: built('KVNET_DOCKER28_DIR') },
        ],
      };
    }
    case '20.10':
      return {
        name,
        dockerd: '/usr/sbin/dockerd',
        cli: '/usr/bin/docker',
        path: [],
        files: ['/usr/sbin/dockerd', '/usr/bin/docker'].map((file) => ({ file, from: 'Debian package docker.io (scripts/setup.sh)' })),
      };
  }
}

/** `KVNET_DOCKER_ENGINE` when set (it must name one of {@link DOCKER_ENGINES}), else {@link DEFAULT_DOCKER_ENGINE}. */
export function defaultDockerEngine(): DockerEngineName {
  const v = process.env.KVNET_DOCKER_ENGINE;
  if (!v) return DEFAULT_DOCKER_ENGINE;
  if (!(DOCKER_ENGINES as readonly string[]).includes(v)) throw new Error(`KVNET_DOCKER_ENGINE=${v} is not an engine the tests know (${DOCKER_ENGINES.join(', ')})`);
  return v as DockerEngineName;
}

/** Why `engine` cannot run here ("" when it can): the first missing file and what makes it. */
export function engineMissing(engine: DockerEngine): string {
  const missing = engine.files.find((f) => !existsSync(f.file));
  return missing ? `Docker ${engine.name} needs ${missing.file} (made by ${missing.from})` : '';
}

/** PATH for a process that should find `engine`'s helpers first. */
export function enginePath(engine: DockerEngine, base = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'): string {
  return [...engine.path, base].join(':');
}
