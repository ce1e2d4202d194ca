#!/usr/bin/env node
// `npm run build`: bundles the kvnet command (agent included) into dist/kvnet.mjs with esbuild, so
// production runs plain JavaScript: no TypeScript loader in the process (it costs ~40 MiB of RSS and
// start-up time). Registry dependencies stay external (native better-sqlite3, the store clients).
// Code splitting: what `kvnet agent` imports when it runs (the agent, the store backends, pino) goes
// into dist/chunks/, so a client command (`kvnet network ls`) loads only the CLI and the unix-socket
// client. The version and git commit are compiled in (`__KVNET_BUILD__`, see
// packages/agent/src/version.ts). Copy dist/ whole (the entry and its chunks).
// Also writes dist/kvnet, the launcher to run: node with a 1 MiB young-generation semi-space, which
// keeps an agent's RSS ≈ 15–25 MiB lower at no measurable cost (an agent allocates little). And
// bundles the CNI plugin into dist/kvnet-cni (below).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2] ?? join(root, 'dist', 'kvnet.mjs');
const outDir = dirname(out);
const CHUNKS = 'chunks';

function commit() {
  try {
    return execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch {
    return 'unknown'; // a copy without .git
  }
}
const { version } = JSON.parse(readFileSync(join(root, 'packages', 'agent', 'package.json'), 'utf8'));
const external = new Set();
for (const pkg of ['store', 'ipam', 'dataplane', 'agent', 'cli']) {
  const { dependencies = {} } = JSON.parse(readFileSync(join(root, 'packages', pkg, 'package.json'), 'utf8'));
  for (const name of Object.keys(dependencies)) if (!name.startsWith('@kvnet/')) external.add(name);
}
// Bundled, not external: what every client command loads (plain JavaScript, no native code). Read
// from one file it starts faster than resolved and loaded as CommonJS from node_modules.
for (const name of ['commander', '@commander-js/extra-typings']) external.delete(name);
rmSync(join(outDir, CHUNKS), { recursive: true, force: true });
await build({
  entryPoints: { [basename(out, '.mjs')]: join(root, 'packages', 'cli', 'src', 'main.ts') },
  outdir: outDir,
  outExtension: { '.js': '.mjs' },
  splitting: true,
  chunkNames: `${CHUNKS}/[name]-[hash]`,
  define: { __KVNET_BUILD__: JSON.stringify({ version, commit: commit() }) },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  external: [...external],
  logLevel: 'warning',
  // ESM output still meets CommonJS-only dependencies that call require().
  banner: { js: "import { createRequire as __kvnetRequire } from 'node:module'; const require = __kvnetRequire(import.meta.url);" },
});
// The names face's resolver process (packages/agent/src/names/resolver-main.ts), a second bundle next
// to the first: the agent starts it as `node kvnet-resolver.mjs` (names-client.ts, defaultResolverCommand).
await build({
  entryPoints: [join(root, 'packages', 'agent', 'src', 'names', 'resolver-main.ts')],
  outfile: join(dirname(out), 'kvnet-resolver.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  external: [...external],
  logLevel: 'warning',
  banner: { js: "import { createRequire as __kvnetRequire } from 'node:module'; const require = __kvnetRequire(import.meta.url);" },
});
// The CNI plugin (packages/cni): a runtime starts it once per call, so it is its own small bundle that
// loads only the unix-socket client (Node built-ins only), never the agent. One extensionless file with a
// shebang, installed as `kvnet` (scripts/install-cni.sh). Node runs an extensionless file as CommonJS, or
// as ESM when the nearest package.json says "type": "module" (this repository's does), so the bundle is
// CommonJS that also runs as ESM: its `require` falls back to process.getBuiltinModule (Node ≥ 20.16).
const cniOut = join(dirname(out), 'kvnet-cni');
await build({
  entryPoints: [join(root, 'packages', 'cni', 'src', 'main.ts')],
  outfile: cniOut,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  logLevel: 'warning',
  banner: { js: "#!/usr/bin/env node\nvar require = typeof require === 'function' ? require : process.getBuiltinModule;" },
});
chmodSync(cniOut, 0o755);
/** Node flags the launcher (and the cluster benchmark) run the bundle with. */
export const NODE_FLAGS = ['--max-semi-space-size=1'];
const launcher = join(dirname(out), 'kvnet');
writeFileSync(
  launcher,
  `#!/bin/sh\n# kvnet, from the bundle next to this file (npm run build).\nexec node ${NODE_FLAGS.join(' ')} "$(dirname "$(readlink -f "$0")")/kvnet.mjs" "$@"\n`,
);
chmodSync(launcher, 0o755);
process.stderr.write(`built ${out} (and ${join(outDir, CHUNKS)}/), ${join(outDir, 'kvnet-resolver.mjs')}, ${launcher} and ${cniOut}\n`);
