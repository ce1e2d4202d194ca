#!/usr/bin/env node
/** Entry point of the `kvnet` command (`node --import tsx packages/cli/src/main.ts …`). */

import { runCli } from './program.ts';

const code = await runCli(process.argv.slice(2), {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
});
// Flush stdout/stderr, then exit even if a library left a handle open.
process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
