import test from 'ava';
import { openStore } from '@kvnet/store';
import { startServer, type KvServer } from '../../../test/support/kv-servers.ts';
import { runIpamSuite } from './suite.ts';

let server: KvServer;
test.before(async () => {
  server = await startServer('etcd');
});
test.after.always(async () => {
  await server?.dispose();
});

runIpamSuite(test, () => ({
  backend: 'etcd',
  url: (label) => server.url(`kvnet-ipam/${label}`),
  open: (url) => openStore(url, { timeoutMs: 15_000 }),
}));
