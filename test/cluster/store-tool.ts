/**
 * Direct store access for the cluster scenarios ("by hand", behind the agents' backs):
 *
 *   node --import tsx test/cluster/store-tool.ts STORE_URL list [PREFIX]   → JSON [{key, value, leaseId?}]
 *   node --import tsx test/cluster/store-tool.ts STORE_URL delete KEY      → prints true/false
 *   node --import tsx test/cluster/store-tool.ts STORE_URL session         → prints "ready", then answers
 *       one JSON line per input line `list PREFIX` / `delete KEY` / `put KEY VALUE` (VALUE: the rest of
 *       the line, stored as text), so a test or benchmark can act within milliseconds
 *
 * The harness runs it inside a simulated host's namespace, where the KV server is reachable.
 */

import { createInterface } from 'node:readline';
import { openStore, type KVStore } from '../../packages/store/src/index.ts';

const [url, command, arg = ''] = process.argv.slice(2);
if (!url || !command) {
  process.stderr.write('usage: store-tool.ts STORE_URL list [PREFIX] | delete KEY | session\n');
  process.exit(2);
}

async function exec(store: KVStore, cmd: string, a: string, rest = ''): Promise<unknown> {
  if (cmd === 'list') {
    const listing = await store.list(a);
    return listing.entries.map((e) => ({
      key: e.key,
      value: Buffer.from(e.value).toString('utf8'),
      ...(e.leaseId ? { leaseId: e.leaseId } : {}),
    }));
  }
  if (cmd === 'delete') {
    if (!a) throw new Error('delete needs a key');
    return store.delete(a);
  }
  if (cmd === 'put') {
    if (!a || !rest) throw new Error('put needs a key and a value');
    await store.put(a, Buffer.from(rest, 'utf8'));
    return true;
  }
  throw new Error(`unknown command ${cmd}`);
}

const store = await openStore(url, { timeoutMs: 10_000 });
try {
  if (command === 'session') {
    process.stdout.write('ready\n');
    for await (const line of createInterface({ input: process.stdin })) {
      const m = /^\s*(\S+)(?:\s+(\S+))?(?:\s(.*))?$/.exec(line);
      if (!m) continue;
      const [, cmd = '', a = '', rest = ''] = m;
      try {
        process.stdout.write(`${JSON.stringify({ ok: true, result: await exec(store, cmd, a, rest) })}\n`);
      } catch (err) {
        process.stdout.write(`${JSON.stringify({ ok: false, error: String(err) })}\n`);
      }
    }
  } else {
    process.stdout.write(`${JSON.stringify(await exec(store, command, arg))}\n`);
  }
} finally {
  await store.close();
}
