/** The plugin server on a real unix socket (no root needed): transport, limits, socket lifecycle. */

import test from 'ava';
import { lstatSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { request } from 'node:http';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { DockerPluginServer, PLUGIN_SOCKET_MODE } from '../src/docker/plugin-server.ts';
import type { PluginHandlers } from '../src/docker/protocol.ts';

const logger = pino({ level: 'silent' });

const handlers = {
  networkCapabilities: () => ({ Scope: 'local', ConnectivityScope: 'global' }),
  ipamCapabilities: () => ({ RequiresMACAddress: false, RequiresRequestReplay: false }),
  requestPool: async () => {
    throw new Error('pool trouble');
  },
} as unknown as PluginHandlers;

function post(socketPath: string, path: string, body: string | Buffer, method = 'POST'): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method, headers: { 'content-length': Buffer.byteLength(body), accept: 'application/vnd.docker.plugins.v1.2+json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || '{}') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function tmp(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-plugin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('serves the protocol on a 0660 socket and removes it on stop', async (t) => {
  const path = join(tmp(t), 'plugins', 'kvnet.sock');
  const server = new DockerPluginServer({ socketPath: path, handlers, logger });
  await server.start();
  t.teardown(() => server.stop());
  const st = lstatSync(path);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, PLUGIN_SOCKET_MODE);
  t.deepEqual(await post(path, '/Plugin.Activate', ''), { status: 200, json: { Implements: ['NetworkDriver', 'IpamDriver'] } });
  t.deepEqual((await post(path, '/NetworkDriver.GetCapabilities', '')).json, { Scope: 'local', ConnectivityScope: 'global' });
  const unknown = await post(path, '/NetworkDriver.Nope', '{}');
  t.is(unknown.status, 404);
  t.regex(String(unknown.json.Err), /unknown method/);
  const bad = await post(path, '/IpamDriver.RequestPool', '{not json');
  t.is(bad.status, 200);
  t.regex(String(bad.json.Error), /malformed JSON/);
  t.deepEqual((await post(path, '/IpamDriver.RequestPool', '{"Pool":"10.0.0.0/24"}')).json, { Error: 'pool trouble' });
  const get = await post(path, '/Plugin.Activate', '', 'GET');
  t.is(get.status, 405);
  await server.stop();
  t.false(existsSync(path));
});

test('an oversized body is refused with a clear error and the server keeps serving', async (t) => {
  const path = join(tmp(t), 'kvnet.sock');
  const server = new DockerPluginServer({ socketPath: path, handlers, logger, maxBodyBytes: 1024 });
  await server.start();
  t.teardown(() => server.stop());
  const big = await post(path, '/NetworkDriver.CreateNetwork', Buffer.alloc(4096, 'x'));
  t.is(big.status, 413);
  t.regex(String(big.json.Err), /exceeds 1024/);
  const ipamBig = await post(path, '/IpamDriver.RequestAddress', Buffer.alloc(4096, 'x'));
  t.regex(String(ipamBig.json.Error), /exceeds 1024/);
  // chunked, without a Content-Length: refused once the limit is crossed
  const chunked = await new Promise<{ status: number; json: Record<string, unknown> }>((resolve, reject) => {
    const req = request({ socketPath: path, path: '/NetworkDriver.Join', method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on('error', reject);
    for (let i = 0; i < 4; i++) req.write(Buffer.alloc(512, 'y'));
    req.end();
  });
  t.is(chunked.status, 413);
  t.regex(String(chunked.json.Err), /exceeds 1024 bytes/);
  // a client that goes away mid-body does not hurt the server
  await new Promise<void>((resolve) => {
    const req = request({ socketPath: path, path: '/NetworkDriver.Join', method: 'POST', headers: { 'content-length': 500 } });
    req.on('error', () => resolve());
    req.write('{"NetworkID":');
    setTimeout(() => {
      req.destroy();
      resolve();
    }, 50);
  });
  t.is((await post(path, '/Plugin.Activate', '')).status, 200);
});

test('a stale socket is replaced; a live one or a non-socket is not', async (t) => {
  const dir = tmp(t);
  // stale: a socket file nobody listens on
  const stalePath = join(dir, 'stale.sock');
  // a bound socket file whose process is gone, as a killed agent leaves it
  t.throws(() => execFileSync(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", stalePath], { stdio: 'ignore' }));
  t.true(lstatSync(stalePath).isSocket());
  const s1 = new DockerPluginServer({ socketPath: stalePath, handlers, logger });
  await s1.start();
  t.teardown(() => s1.stop());
  t.is((await post(stalePath, '/Plugin.Activate', '')).status, 200);

  // live: the first server still answers, so a second must refuse
  const s2 = new DockerPluginServer({ socketPath: stalePath, handlers, logger });
  await t.throwsAsync(() => s2.start(), { message: /another process is answering on socket .*stale\.sock/ });
  t.is((await post(stalePath, '/Plugin.Activate', '')).status, 200);

  const filePath = join(dir, 'file.sock');
  writeFileSync(filePath, 'x');
  await t.throwsAsync(() => new DockerPluginServer({ socketPath: filePath, handlers, logger }).start(), { message: /is not a socket/ });
});
