/**
 * The Docker sandbox registry (pure bookkeeping on a real file in a temp dir): which sandbox each
 * endpoint joined, exactly one route holder per sandbox, the next holder when it leaves, and all of it
 * surviving a reload (an agent restart).
 */

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DOCKER_SANDBOXES_FILE, DockerSandboxes } from '../../src/names/docker-sandboxes.ts';

function dir(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'kvnet-sbx-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

test('the first joined endpoint of a sandbox holds the route; later ones do not; a repeated Join changes nothing', (t) => {
  const s = new DockerSandboxes(dir(t));
  t.true(s.join('a', '/var/run/docker/netns/1'));
  t.false(s.join('b', '/var/run/docker/netns/1'), 'a second kvnet interface must not ask dockerd for the same route');
  t.true(s.join('c', '/var/run/docker/netns/2'), 'another sandbox has its own holder');
  t.true(s.join('a', '/var/run/docker/netns/1'));
  t.false(s.join('b', '/var/run/docker/netns/1'));
  t.is(s.sandboxOf('b'), '/var/run/docker/netns/1');
  t.is(s.sandboxOf('zz'), undefined);
});

test('when the holder leaves, the earliest joined sibling takes the route; a non-holder leaving moves nothing', (t) => {
  const s = new DockerSandboxes(dir(t));
  s.join('a', 'sb');
  s.join('b', 'sb');
  s.join('c', 'sb');
  t.deepEqual(s.leave('c'), { sandbox: 'sb', heldRoute: false });
  t.deepEqual(s.leave('a'), { sandbox: 'sb', heldRoute: true, nextHolder: 'b' });
  t.true(s.holdsRoute('b'));
  t.deepEqual(s.leave('b'), { sandbox: 'sb', heldRoute: true });
  t.is(s.leave('b'), undefined, 'an endpoint that had not joined (or left already)');
  t.true(s.join('d', 'sb'), 'an emptied sandbox gives the route to the next joiner');
});

test('survives a reload (agent restart); prune forgets endpoints that are gone and hands their route on', (t) => {
  const d = dir(t);
  const s = new DockerSandboxes(d);
  s.join('a', 'sb1');
  s.join('b', 'sb1');
  s.join('c', 'sb2');
  const again = new DockerSandboxes(d);
  t.is(again.sandboxOf('b'), 'sb1');
  t.true(again.holdsRoute('a'));
  t.false(again.join('e', 'sb1'), 'the holder is still known after the reload');
  t.deepEqual(again.prune((id) => id !== 'a' && id !== 'c'), [{ sandbox: 'sb1', heldRoute: true, nextHolder: 'b' }, { sandbox: 'sb2', heldRoute: true }]);
  t.is(again.sandboxOf('c'), undefined);
  t.true(JSON.parse(readFileSync(join(d, DOCKER_SANDBOXES_FILE), 'utf8')).endpoints.b.route);
});

test('an unreadable file is reported and started afresh', (t) => {
  const d = dir(t);
  writeFileSync(join(d, DOCKER_SANDBOXES_FILE), '{not json');
  const problems: string[] = [];
  const s = new DockerSandboxes(d, (err) => problems.push(err.message));
  t.is(problems.length, 1);
  t.true(s.join('a', 'sb'));
});
