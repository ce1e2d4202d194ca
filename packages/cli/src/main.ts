#!/usr/bin/env node
/** Entry point of the `kvnet` command (`node --import tsx packages/cli/src/main.ts …`, or the bundle dist/kvnet.mjs). */

import { runCli } from './program.ts';

const code = await runCli(process.argv.slice(2), {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
  prompt: async (question) => {
    const { createInterface } = await import('node:readline/promises');
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      return await rl.question(question);
    } catch {
      return ''; // stdin closed: no answer
    } finally {
      rl.close();
    }
  },
});
// Flush stdout/stderr, then exit even if a library left a handle open.
process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
