/**
 * What this build of kvnet is (`kvnet version`, `/v1/status`, the `kvnet_build_info` metric). A
 * bundle made by scripts/build.mjs has version and commit compiled in (esbuild `define` of
 * `__KVNET_BUILD__`); run from the TypeScript sources the version is read from this package's
 * package.json and the commit is `source`. Light on purpose: client commands load it.
 */

import { readFileSync } from 'node:fs';

declare const __KVNET_BUILD__: { readonly version: string; readonly commit: string } | undefined;

export interface BuildInfo {
  /** kvnet's version (the packages' `version`). */
  readonly version: string;
  /** Short git commit the bundle was built from; `source` when run from the sources, `unknown` without git. */
  readonly commit: string;
  /** The Node.js version running it. */
  readonly node: string;
}

function sourceVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

export const BUILD_INFO: BuildInfo =
  typeof __KVNET_BUILD__ !== 'undefined'
    ? { version: __KVNET_BUILD__.version, commit: __KVNET_BUILD__.commit, node: process.versions.node }
    : { version: sourceVersion(), commit: 'source', node: process.versions.node };

/** kvnet's version. */
export const AGENT_VERSION: string = BUILD_INFO.version;
