import test from 'ava';
import { connectSchema, createNetworkSchema, validate } from '../src/api/schemas.ts';
import { statusOf } from '../src/api/index.ts';
import { InvalidInputError, NameConflictError, NotFoundError } from '../src/errors.ts';
import { invalidInputMessage } from './fixtures/invalid-input.ts';

const message = invalidInputMessage;

test('a valid create passes through unchanged', (t) => {
  const body = { name: 'my.net-1', subnet: '10.1.0.0/16', gateway: '10.1.0.254', ipRange: '10.1.1.0/24', auxAddresses: { router: '10.1.0.2' }, internal: true, labels: { a: 'b' }, options: { 'com.docker.x': 'y' } };
  t.deepEqual(validate(createNetworkSchema, body), body);
});

test('create: each bad field is named with its value', (t) => {
  t.regex(message(() => validate(createNetworkSchema, { name: '-x' })), /^invalid name "-x": must start with a letter or digit/);
  t.regex(message(() => validate(createNetworkSchema, { name: 'n', subnet: '10.0.0.0/31' })), /invalid subnet "10\.0\.0\.0\/31": is not an IPv4 CIDR/);
  t.regex(message(() => validate(createNetworkSchema, { name: 'n', gateway: '10.0.0.256' })), /invalid gateway "10\.0\.0\.256": is not an IPv4 or IPv6 address/);
  t.regex(message(() => validate(createNetworkSchema, { name: 'n', auxAddresses: { r: 'x' } })), /invalid auxAddresses\.r "x"/);
  t.regex(message(() => validate(createNetworkSchema, { name: 'n', internal: 'yes' })), /invalid internal "yes"/);
  t.regex(message(() => validate(createNetworkSchema, {})), /^missing name/);
  t.regex(message(() => validate(createNetworkSchema, { name: 'n', color: 'red' })), /unknown field "color"/);
  t.regex(message(() => validate(createNetworkSchema, [])), /request body must be a JSON object/);
  t.regex(message(() => validate(createNetworkSchema, { name: 'x'.repeat(65) })), /invalid name/);
});

test('connect: netns must be an absolute path without quotes; ip and ifname are checked', (t) => {
  t.deepEqual(validate(connectSchema, { netns: '/run/netns/c1', name: 'web2', ip: '10.0.0.9', ifname: 'eth1' }), { netns: '/run/netns/c1', name: 'web2', ip: '10.0.0.9', ifname: 'eth1' });
  t.regex(message(() => validate(connectSchema, { netns: 'c1' })), /invalid netns "c1": must be an absolute path/);
  t.deepEqual(validate(connectSchema, { netns: '/run/netns/c1', aliases: ['web', 'www.1'] }), { netns: '/run/netns/c1', aliases: ['web', 'www.1'] });
  t.regex(message(() => validate(connectSchema, { netns: '/x', aliases: ['ok', '-bad'] })), /invalid aliases\.1 "-bad": must start with a letter or digit/);
  t.regex(message(() => validate(connectSchema, { netns: '/x', aliases: Array.from({ length: 33 }, (_, i) => `a${i}`) })), /at most 32 aliases/);
  t.regex(message(() => validate(connectSchema, { netns: '/run/netns/a b' })), /invalid netns "\/run\/netns\/a b"/);
  t.regex(message(() => validate(connectSchema, { netns: '/x', ip: '10.0.0.0/24' })), /invalid ip "10\.0\.0\.0\/24"/);
  t.regex(message(() => validate(connectSchema, { netns: '/x', ifname: 'waytoolonginterface' })), /invalid ifname "waytoolonginterface"/);
  t.regex(message(() => validate(connectSchema, {})), /missing netns/);
});

test('errors map to HTTP statuses by kind', (t) => {
  t.is(statusOf(new InvalidInputError('x')), 400);
  t.is(statusOf(new NotFoundError('x')), 404);
  t.is(statusOf(new NameConflictError('x')), 409);
  t.is(statusOf(Object.assign(new Error('overlap'), { code: 'KVNET_IPAM_POOL_OVERLAP', kind: 'conflict' })), 400);
  t.is(statusOf(Object.assign(new Error('down'), { code: 'KVNET_STORE_UNAVAILABLE', kind: 'unavailable' })), 503);
  t.is(statusOf(new Error('boom')), 500);
});
