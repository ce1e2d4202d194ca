// The plugin's edge without an agent: VERSION, the error JSON, and an agent socket nobody serves
// (a real path: connecting to it fails the way it does when the agent is down).
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlugin } from '../src/plugin.ts';
import { ErrorCode, SUPPORTED_VERSIONS } from '../src/spec.ts';

const run = (env: Record<string, string>, stdin: string) => runPlugin({ env, stdin: async () => stdin });
const parsed = (stdout: string): Record<string, unknown> => JSON.parse(stdout) as Record<string, unknown>;

test('VERSION answers in the version asked, with every supported version', async (t) => {
  const r = await run({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  t.is(r.exitCode, 0);
  t.deepEqual(parsed(r.stdout), { cniVersion: '1.0.0', supportedVersions: [...SUPPORTED_VERSIONS] });
  t.is(parsed((await run({ CNI_COMMAND: 'VERSION' }, '')).stdout).cniVersion, '1.1.0');
});

test('every failure is CNI error JSON on stdout, exit 1, in the configuration version', async (t) => {
  const r = await run({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/run/netns/none', CNI_IFNAME: 'eth0' }, '{"cniVersion":"0.4.0","name":"multi","type":"kvnet","ipam":{}}');
  t.is(r.exitCode, 1);
  const e = parsed(r.stdout);
  t.is(e.cniVersion, '0.4.0');
  t.is(e.code, ErrorCode.UNSUPPORTED_FIELD);
  t.is(typeof e.msg, 'string');
  const noCommand = await run({}, '{}');
  t.is(parsed(noCommand.stdout).code, ErrorCode.INVALID_ENVIRONMENT);
  t.is(parsed(noCommand.stdout).cniVersion, '1.1.0');
  const stdinFails = await runPlugin({ env: { CNI_COMMAND: 'DEL' }, stdin: () => Promise.reject(new Error('EIO')) });
  t.is(parsed(stdinFails.stdout).code, ErrorCode.IO_FAILURE);
});

test('a verb newer than the configuration version is incompatible (CHECK needs 0.4.0, STATUS and GC 1.1.0)', async (t) => {
  const env = { CNI_CONTAINERID: 'c1', CNI_NETNS: '/run/netns/c1', CNI_IFNAME: 'eth0' };
  const check = await run({ ...env, CNI_COMMAND: 'CHECK' }, '{"cniVersion":"0.3.1","name":"multi","type":"kvnet"}');
  t.is(parsed(check.stdout).code, ErrorCode.INCOMPATIBLE_VERSION);
  t.regex(parsed(check.stdout).msg as string, /CHECK needs cniVersion 0\.4\.0 or later; network configuration multi has 0\.3\.1/);
  const status = await run({ CNI_COMMAND: 'STATUS' }, '{"cniVersion":"1.0.0","name":"multi","type":"kvnet"}');
  t.is(parsed(status.stdout).code, ErrorCode.INCOMPATIBLE_VERSION);
  const gc = await run({ CNI_COMMAND: 'GC' }, '{"cniVersion":"1.0.0","name":"multi","type":"kvnet"}');
  t.is(parsed(gc.stdout).code, ErrorCode.INCOMPATIBLE_VERSION);
});

test('ADD into a netns that does not exist: the container is unknown (3), before the agent is asked', async (t) => {
  const r = await run({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/run/netns/kvnet-no-such-netns', CNI_IFNAME: 'eth0' }, '{"cniVersion":"1.0.0","name":"multi","type":"kvnet","socket":"/nonexistent/kvnet.sock"}');
  t.is(parsed(r.stdout).code, ErrorCode.UNKNOWN_CONTAINER);
  t.regex(parsed(r.stdout).msg as string, /CNI_NETNS=\/run\/netns\/kvnet-no-such-netns does not exist; nothing was attached to network multi/);
});

test('an agent that does not listen: DEL is "try again later" (11) naming the socket; STATUS says existing containers may be limited (51)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-cni-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'kvnet.sock');
  const conf = JSON.stringify({ cniVersion: '1.1.0', name: 'multi', type: 'kvnet', socket });
  const del = await run({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0' }, conf);
  t.is(del.exitCode, 1);
  t.is(parsed(del.stdout).code, ErrorCode.TRY_AGAIN_LATER);
  t.is(parsed(del.stdout).msg, `the kvnet agent is not reachable on ${socket}: no such socket`);
  const status = await run({ CNI_COMMAND: 'STATUS' }, conf);
  t.is(parsed(status.stdout).code, ErrorCode.PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY);
});
