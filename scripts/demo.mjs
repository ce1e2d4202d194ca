#!/usr/bin/env node
// `npm run demo`: kvnet's main job, on this machine, as root. Installs what it needs (scripts/setup.sh,
// idempotent), then runs scripts/demo-cluster.ts: three simulated hosts, one agent each, one network,
// three containers pinging each other across the overlay. Everything it creates is removed at the end,
// also on failure or Ctrl-C.
import { spawn, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

if (process.getuid?.() !== 0) {
  process.stderr.write('npm run demo needs root: it installs packages and creates network namespaces (try: sudo npm run demo)\n');
  process.exit(1);
}

process.stdout.write('kvnet demo: preparing this machine (scripts/setup.sh; a few seconds when already set up, minutes on a fresh one)\n');
const setup = spawnSync('bash', [join(root, 'scripts', 'setup.sh')], { cwd: root, stdio: 'inherit' });
if (setup.status !== 0) {
  process.stderr.write(`\nsetup failed (exit ${setup.status ?? setup.signal}); see the messages above\n`);
  process.exit(1);
}

const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'scripts', 'demo-cluster.ts'), ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
});
// Ctrl-C reaches the child directly (same process group): it cleans up and exits, and we wait for
// it. SIGTERM/SIGHUP sent to this process alone are passed on.
process.on('SIGINT', () => undefined);
for (const sig of ['SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (child.exitCode === null) child.kill(sig);
  });
}
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 130 : 1)));
