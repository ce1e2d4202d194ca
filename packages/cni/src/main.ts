/**
 * The `kvnet` CNI plugin executable (`npm run build` bundles this file into dist/kvnet-cni; it is
 * installed as `kvnet` in the runtime's CNI plugin directory, /opt/cni/bin by default). A container
 * runtime runs it once per call with `CNI_*` variables and the network configuration on stdin.
 */

import { runPlugin } from './plugin.ts';

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    process.stdin.on('data', (c: Buffer) => chunks.push(c));
    process.stdin.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.once('error', reject);
  });
}

// No top-level await: the bundle is CommonJS, so the installed file runs without a package.json beside it.
void runPlugin({ env: process.env, stdin: readStdin }).then((outcome) => {
  process.stdout.write(outcome.stdout, () => process.exit(outcome.exitCode));
});
