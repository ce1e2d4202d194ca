#!/usr/bin/env node
// npm run bench -- <suite> [options]: runs test/bench/<suite>.bench.ts (see shared conventions in README).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const benchDir = join(root, 'test', 'bench');
const suites = readdirSync(benchDir).filter((f) => f.endsWith('.bench.ts')).map((f) => f.replace(/\.bench\.ts$/, ''));
const [suite, ...args] = process.argv.slice(2);
if (!suite || suite === '--help' || !suites.includes(suite)) {
  process.stderr.write(`usage: npm run bench -- <suite> [--json] [suite options]\nsuites: ${suites.sort().join(', ')}\n`);
  process.exit(suite && suite !== '--help' ? 2 : 0);
}
const file = join(benchDir, `${suite}.bench.ts`);
if (!existsSync(file)) process.exit(2);
const r = spawnSync(process.execPath, ['--import', 'tsx', file, ...args], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
