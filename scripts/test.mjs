#!/usr/bin/env node
// `npm test`: sets the machine up (scripts/setup.sh: Debian packages, Consul, npm deps), then runs
// every test file with ava and ends with the plain line `N passed, N failed`, counted from ava's TAP
// stream. Extra arguments go to ava (e.g. `npm test -- packages/store/test/etcd.test.ts`).
// KVNET_SKIP_SETUP=1 skips the set-up step (for a machine already set up).
import { spawn, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

if (process.env.KVNET_SKIP_SETUP !== '1') {
  const setup = spawnSync('bash', [join(root, 'scripts', 'setup.sh')], { stdio: 'inherit', cwd: root });
  if (setup.status !== 0) {
    process.stdout.write(`set-up failed (scripts/setup.sh exited ${setup.status ?? setup.signal}); no test ran\n0 passed, 1 failed\n`);
    process.exit(1);
  }
}

const ava = join(root, 'node_modules', 'ava', 'entrypoints', 'cli.mjs');
const concurrency = process.env.KVNET_TEST_CONCURRENCY ?? '3';
const child = spawn(process.execPath, [ava, '--tap', '--concurrency', concurrency, ...process.argv.slice(2)], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
});

let passed = 0;
let failed = 0;
let skipped = 0;
let todo = 0;
const failures = [];
const lines = createInterface({ input: child.stdout });
lines.on('line', (line) => {
  process.stdout.write(`${line}\n`);
  const m = /^(not ok|ok)\b(?:\s+\d+)?\s*(?:-\s*)?(.*)$/.exec(line);
  if (!m) return;
  const [, status, rest = ''] = m;
  if (/#\s*SKIP\b/i.test(rest)) skipped++;
  else if (/#\s*TODO\b/i.test(rest)) todo++;
  else if (status === 'ok') passed++;
  else {
    failed++;
    failures.push(rest);
  }
});

const forward = (sig) => () => child.kill(sig);
process.on('SIGINT', forward('SIGINT'));
process.on('SIGTERM', forward('SIGTERM'));

child.on('close', (code, signal) => {
  if ((code !== 0 || signal) && failed === 0) {
    failed = 1;
    failures.push(`ava exited ${code ?? signal} without reporting a failed test (crash, timeout or no test files)`);
  }
  if (failures.length) process.stdout.write(`\nFailed:\n${failures.map((f) => `  - ${f}`).join('\n')}\n`);
  if (skipped || todo) process.stdout.write(`${skipped} skipped, ${todo} todo (not counted as passed)\n`);
  process.stdout.write(`${passed} passed, ${failed} failed\n`);
  process.exit(failed ? 1 : 0);
});
