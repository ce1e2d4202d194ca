/** The local API server's socket handling and routing (a stub service; no root needed). */

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { startApi } from '../src/api/index.ts';
import type { AgentContext } from '../src/context.ts';
import { NameConflictError } from '../src/errors.ts';
import type { NetworkService } from '../src/network-service.ts';
import { unixRequest } from '../src/unix-http.ts';

const logger = pino({ level: 'silent' });
const status = { status: () => ({ node: 'h1', ready: true }), nodes: () => [{ name: 'h1' }] };
const service = {
  listNetworks: () => [],
  createNetwork: async () => {
    throw new NameConflictError('network with name multi already exists');
  },
} as unknown as NetworkService;

/** The API face with a stub service: only what it reads of the agent's context. */
function api(socketPath: string) {
  const ctx = { config: { socketPath }, networks: service, status, logger } as unknown as AgentContext;
  return { start: () => startApi(ctx) };
}

async function call(socketPath: string, method: string, path: string, body?: string): Promise<{ status: number; body: string }> {
  const r = await unixRequest({ socketPath, method, path, ...(body !== undefined ? { rawBody: body } : {}), timeoutMs: 10_000 });
  return { status: r.status, body: r.text };
}

function tmp(t: import('ava').ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'kvnet-api-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('serves on a 0600 socket in a new 0700 directory; routes and error bodies', async (t) => {
  const socketPath = join(tmp(t), 'run', 'kvnet.sock');
  const face = await api(socketPath).start();
  t.teardown(() => face.stop());
  t.is(statSync(socketPath).mode & 0o777, 0o600);
  t.is(statSync(join(socketPath, '..')).mode & 0o777, 0o700);
  t.deepEqual(JSON.parse((await call(socketPath, 'GET', '/v1/status')).body), { node: 'h1', ready: true });
  t.deepEqual(JSON.parse((await call(socketPath, 'GET', '/v1/networks')).body), []);
  const conflict = await call(socketPath, 'POST', '/v1/networks', JSON.stringify({ name: 'multi' }));
  t.is(conflict.status, 409);
  t.deepEqual(JSON.parse(conflict.body), { error: 'network with name multi already exists', code: 'KVNET_NAME_CONFLICT' });
  const bad = await call(socketPath, 'POST', '/v1/networks', '{"name": 1}');
  t.is(bad.status, 400);
  t.regex(JSON.parse(bad.body).error, /invalid name 1/);
  t.is((await call(socketPath, 'PUT', '/v1/networks')).status, 405);
  t.is((await call(socketPath, 'GET', '/nope')).status, 404);
});

test('a body that is not JSON is refused without echoing it (no control characters reach a terminal or a log)', async (t) => {
  const socketPath = join(tmp(t), 'kvnet.sock');
  const face = await api(socketPath).start();
  t.teardown(() => face.stop());
  for (const body of ['nope\u001b[31mRED\u0007', '{"name": "x"\u0000}', '{nope']) {
    const r = await call(socketPath, 'POST', '/v1/networks', body);
    t.is(r.status, 400);
    const { error, code } = JSON.parse(r.body) as { error: string; code: string };
    t.is(code, 'KVNET_INVALID_INPUT');
    t.regex(error, new RegExp(`^request body \\(${Buffer.byteLength(body)} bytes\\) is not valid JSON: `));
    t.false(/[\u0000-\u001f\u007f]/.test(error), `no control characters in ${JSON.stringify(error)}`);
    t.false(error.includes('RED'), 'the body is not echoed');
  }
});

test('a stale socket nobody answers on is replaced; a live one or a regular file is refused', async (t) => {
  const dir = tmp(t);
  const stale = join(dir, 'stale.sock');
  // A bound but never listening unix socket: connecting is refused, like one left by a killed agent.
  execFileSync('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(stale)})`]);
  const face = await api(stale).start();
  t.is((await call(stale, 'GET', '/v1/status')).status, 200);
  await face.stop();

  const live = join(dir, 'live.sock');
  const other = createServer((_req, res) => res.end('hi'));
  await new Promise<void>((r) => other.listen(live, () => r()));
  t.teardown(() => new Promise<void>((r) => other.close(() => r())));
  await t.throwsAsync(api(live).start(), { message: /another process is answering on socket .*live\.sock/ });

  const file = join(dir, 'file.sock');
  writeFileSync(file, 'not a socket');
  await t.throwsAsync(api(file).start(), { message: /exists and is not a socket/ });
});
