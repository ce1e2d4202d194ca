/**
 * The resolver process's lifecycle through startNames, with real resolver processes (no listeners, so
 * no kernel changes): start, reconnect, a second copy refused, a killed resolver replaced and re-fed,
 * a resolver of another protocol replaced, bad input refused, shutdown leaving nothing behind.
 */

import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { InvalidConfigError } from '../../src/errors.ts';
import { InvalidNameTableError, ResolverUnavailableError } from '../../src/names/errors.ts';
import { FEED_PROTOCOL } from '../../src/names/feed-protocol.ts';
import { NAME_TABLE_FORMAT, type NameTable, type Names, type NamesContext } from '../../src/names/names.ts';
import { startNames } from '../../src/names/names-client.ts';
import { EXIT_ALREADY_RUNNING } from '../../src/names/resolver-exit-codes.ts';
import { makeTempDir, REPO_ROOT, waitFor } from '../../../../test/support/process.ts';

const logger = pino({ level: 'silent' });
const RESOLVER_MAIN = join(REPO_ROOT, 'packages/agent/src/names/resolver-main.ts');
const command = [process.execPath, '--import', import.meta.resolve('tsx'), RESOLVER_MAIN];
const started = new Set<number>();
const table = (name: string): NameTable => ({
  format: NAME_TABLE_FORMAT,
  networks: [{ id: 'n1', name: 'multi', internal: false, records: [{ endpoint: 'e1', name, aliases: [], ip: '10.9.0.2' }] }],
  sandboxes: [],
});
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

function context(dir: string, extra: Partial<NamesContext> = {}): NamesContext {
  return { logger, socketPath: join(dir, 'resolver.sock'), resolverLog: join(dir, 'resolver.log'), resolverCommand: command, upstreams: ['127.0.0.1:9'], ...extra };
}

async function start(ctx: NamesContext): Promise<Names> {
  const n = await startNames(ctx);
  started.add(n.resolverPid);
  return n;
}

test.after.always(() => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone, as it should be
    }
  }
});

test('start, reconnect from a second feeder, a second resolver on the same socket exits 3, shutdown leaves nothing', async (t) => {
  const dir = makeTempDir('names-life');
  const ctx = context(dir);
  const a = await start(ctx);
  t.true(a.startedResolver);
  t.true(alive(a.resolverPid));
  await a.update(table('c1'), []);
  const b = await start(ctx);
  t.false(b.startedResolver);
  t.is(b.resolverPid, a.resolverPid);
  const status = await b.status();
  t.is(status.pid, a.resolverPid);
  t.truthy(status.tableAt, 'the table fed by the first feeder is there');
  t.log(`resolver RSS through tsx: ${status.rssMiB} MiB`);

  const second = spawn(command[0]!, [...command.slice(1), '--socket', ctx.socketPath!], { stdio: 'ignore' });
  const code = await new Promise<number | null>((resolve) => second.once('exit', resolve));
  t.is(code, EXIT_ALREADY_RUNNING);

  await a.stop();
  await b.shutdown();
  t.false(alive(a.resolverPid));
  t.false(existsSync(ctx.socketPath!));
  t.regex(readFileSync(ctx.resolverLog!, 'utf8'), /kvnet resolver stopped/);
});

test('bad settings are refused before anything starts; a bad table is refused and the last good one stays', async (t) => {
  const dir = makeTempDir('names-life');
  await t.throwsAsync(startNames(context(dir, { address: '169.254.53.300' })), { instanceOf: InvalidConfigError, message: /169\.254\.53\.300/ });
  await t.throwsAsync(startNames(context(dir, { upstreams: ['resolver.example'] })), { instanceOf: InvalidConfigError, message: /resolver\.example/ });
  t.false(existsSync(join(dir, 'resolver.sock')));
  const n = await start(context(dir));
  await n.update(table('c1'), []);
  const before = (await n.status()).tableAt;
  await t.throwsAsync(n.update({ ...table('c2'), format: 99 } as unknown as NameTable, []), { instanceOf: InvalidNameTableError, message: /format is 99/ });
  await t.throwsAsync(n.update(table('c2'), [{ network: 'n1', netns: 'relative/path' }]), { message: /absolute netns paths/ });
  t.is((await n.status()).tableAt, before);
  await n.shutdown();
});

test('a killed resolver is replaced and fed the last table again', async (t) => {
  const dir = makeTempDir('names-life');
  const n = await start(context(dir));
  await n.update(table('c1'), []);
  const first = n.resolverPid;
  process.kill(first, 'SIGKILL');
  await waitFor('a new resolver process', () => n.resolverPid !== first && alive(n.resolverPid), 15_000, 100);
  started.add(n.resolverPid);
  const status = await waitFor('the last table sent again', async () => {
    const s = await n.status();
    return s.tableAt ? s : undefined;
  }, 10_000, 100);
  t.is(status.pid, n.resolverPid);
  await n.shutdown();
  t.false(alive(status.pid));
});

test('a stale socket file is replaced; a resolver of another protocol is told to exit and replaced', async (t) => {
  const dir = makeTempDir('names-life');
  const ctx = context(dir);
  writeFileSync(ctx.socketPath!, '');
  const n = await start(ctx);
  t.true(n.startedResolver, 'a plain file where the socket should be is no resolver');
  await n.shutdown();

  // An "older resolver": answers hello with another protocol, and exits (its pid is a sleep) when told to.
  const old: ChildProcess = spawn('sleep', ['60'], { stdio: 'ignore' });
  started.add(old.pid!);
  let exitAsked = false;
  const server = createServer((sock) => {
    sock.on('data', (d: Buffer) => {
      for (const line of d.toString().split('\n').filter(Boolean)) {
        const req = JSON.parse(line) as { op: string; seq: number };
        if (req.op === 'hello') sock.write(`${JSON.stringify({ op: 'hello', seq: req.seq, pid: old.pid, startedAt: 'then', protocol: FEED_PROTOCOL + 1 })}\n`);
        if (req.op === 'exit') {
          exitAsked = true;
          sock.write(`${JSON.stringify({ op: 'exiting', seq: req.seq })}\n`);
          old.kill('SIGKILL');
          server.close();
          sock.destroy();
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(ctx.socketPath!, resolve));
  const m = await start(ctx);
  t.true(exitAsked);
  t.true(m.startedResolver);
  t.not(m.resolverPid, old.pid);
  await m.shutdown();
});

test('a resolver whose socket file is removed (its run directory deleted) exits by itself', async (t) => {
  const dir = makeTempDir('names-life');
  const n = await start(context(dir));
  await n.update(table('c1'), []);
  const pid = n.resolverPid;
  await n.stop();
  rmSync(dir, { recursive: true, force: true });
  await waitFor('the orphaned resolver to exit', () => !alive(pid), 15_000, 100);
  t.false(alive(pid));
});

test('a resolver whose socket path is taken over by another exits without removing the successor\'s socket', async (t) => {
  const dir = makeTempDir('names-life');
  const ctx = context(dir);
  const first = await start(ctx);
  const pid = first.resolverPid;
  await first.stop();
  // What a new agent does when the old socket file is gone: start another resolver on the same path.
  unlinkSync(ctx.socketPath!);
  const second = await start(ctx);
  t.true(second.startedResolver);
  t.not(second.resolverPid, pid);
  await waitFor('the first resolver to exit', () => !alive(pid), 15_000, 100);
  t.true(existsSync(ctx.socketPath!), 'the successor\'s socket is still there');
  t.is((await second.status()).pid, second.resolverPid, 'and answers');
  await second.shutdown();
});

test('a patch changes the records of the table held; one before any table, for a network it lacks, or after a restart is refused, and the feeder hears of the reconnect', async (t) => {
  const dir = makeTempDir('names-life');
  const n = await start(context(dir));
  let reconnects = 0;
  n.onReconnect(() => reconnects++);
  await t.throwsAsync(n.patch({ networks: [{ id: 'n1', put: [], remove: ['e1'] }] }), { instanceOf: ResolverUnavailableError, message: /does not hold the last table/ });
  await n.update(table('c1'), []);
  t.is((await n.status()).records, 1);
  await n.patch({ networks: [{ id: 'n1', put: [{ endpoint: 'e2', name: 'c2', aliases: ['web'], ip: '10.9.0.3' }, { endpoint: 'e3', name: 'c3', aliases: [], ip: '10.9.0.4' }], remove: ['e1'] }] });
  t.is((await n.status()).records, 2);
  await t.throwsAsync(n.patch({ networks: [{ id: 'elsewhere', put: [], remove: ['e2'] }] }), { instanceOf: InvalidNameTableError, message: /network elsewhere is not in the table/ });
  t.is((await n.status()).records, 2, 'nothing of a refused patch applied');
  await t.throwsAsync(n.patch({ networks: [{ id: 'n1', put: [], remove: ['e2'] }] }), { instanceOf: ResolverUnavailableError }, 'after a refused patch only a whole table may follow');
  await n.update(table('c1'), []);
  await n.patch({ networks: [{ id: 'n1', put: [], remove: ['e1'] }] });
  t.is((await n.status()).records, 0);

  const first = n.resolverPid;
  process.kill(first, 'SIGKILL');
  await waitFor('the feeder told of the reconnect', () => reconnects > 0 && n.resolverPid !== first, 15_000, 100);
  started.add(n.resolverPid);
  await t.throwsAsync(n.patch({ networks: [{ id: 'n1', put: [], remove: [] }] }), { instanceOf: ResolverUnavailableError }, 'a new resolver holds no table');
  t.is((await n.status()).records, 0);
  await n.shutdown();
});
