import test from 'ava';
import { join } from 'node:path';
import { openStore } from '@kvnet/store';
import { makeTempDir } from '../../../test/support/process.ts';
import { runIpamSuite } from './suite.ts';

const dir = makeTempDir('ipam-local');

runIpamSuite(test, () => ({
  backend: 'local',
  url: (label) => `local://${join(dir, `${label}.db`)}`,
  open: (url) => openStore(url),
}));
