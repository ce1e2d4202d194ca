/** The executor against the fake kernel: failures map to objects, the rest still applies, no double reports. */

import test from 'ava';
import { Dataplane, type DesiredNetwork, type DesiredState } from '../src/index.ts';
import { executePlan } from '../src/executor.ts';
import { FakeKernel } from './fixtures/fake-kernel.ts';

const PREFIX = 'kx';
const HOST = 'host1';
const NET_A = 'a'.repeat(64);
const NET_B = 'b'.repeat(64);
const dp = new Dataplane({ namePrefix: PREFIX, hostNetns: HOST, vtep: '198.18.0.1', gatewayBridge: false });

function network(id: string, vni: number, sandbox: string, ip: string, peerIp: string): DesiredNetwork {
  return {
    id,
    vni,
    subnets: [{ cidr: '10.0.1.0/24', gateway: '10.0.1.1' }],
    internal: false,
    endpoints: [{ id: `${vni}`.padEnd(12, '0'), address: `${ip}/24`, sandbox: { path: `/run/netns/${sandbox}`, ifname: 'eth0' } }],
    peers: [{ ip: peerIp, mac: '02:42:0a:00:01:63', vtep: '198.18.0.2' }],
  };
}

const desired: DesiredState = { networks: [network(NET_A, 4097, 'c1', '10.0.1.2', '10.0.1.99'), network(NET_B, 4098, 'c2', '10.0.1.3', '10.0.1.98')] };

function state(k: FakeKernel) {
  return k.state(PREFIX, { kind: 'name', name: HOST });
}

test('a VNI taken by another device: one error naming the network, VNI and kernel reason; the other network is complete', async (t) => {
  const k = new FakeKernel([HOST, 'c1', 'c2']);
  // A foreign VXLAN device holding VNI 4097 on port 4789 in the host namespace.
  await k.runner('ip', { kind: 'name', name: HOST }, ['link add name foreign mtu 1500 type vxlan id 4097 local 198.18.0.1 dstport 4789 nolearning'], {});
  const result = await executePlan(dp.plan(desired, state(k)), { runner: k.runner });
  t.is(result.errors.length, 1, result.errors.map((e) => e.message).join('\n'));
  const err = result.errors[0]!;
  t.is(err.code, 'KVNET_DATAPLANE_KERNEL_REFUSED');
  t.is(err.kind, 'conflict');
  t.deepEqual(err.object, { kind: 'network', network: NET_A, netns: `${PREFIX}-${NET_A}`, ifname: 'vxlan0' });
  t.regex(err.message, /network aaaaaaaaaaaa: cannot create vxlan0 \(VNI 4097, UDP port 4789, local 198\.18\.0\.1\) in netns host1: .*VNI already exists/);
  // Lines that needed vxlan0 were not sent at all (no cascade of "Cannot find device vxlan0").
  t.false(k.log.some((l) => l.startsWith(`${PREFIX}-${NET_A}: `) && /: (ip neigh|bridge fdb) /.test(l)));
  // The endpoint itself did not need vxlan0: it is complete.
  t.truthy(k.ns(`${PREFIX}-${NET_A}`).links.get('ve409700000000')?.alias);
  // Network B is complete: planning again finds only network A's vxlan0 and peers to do.
  const again = dp.plan(desired, state(k));
  t.true(again.stages.flatMap((s) => s.batches.flatMap((b) => b.ops)).every((o) => o.object.network === NET_A));
});

test('a failing sandbox line leaves the endpoint unmarked, so the next plan recreates it', async (t) => {
  const k = new FakeKernel([HOST, 'c1', 'c2']);
  k.failWhen.push((line, ns) => (ns === 'c1' && line.startsWith('addr replace') ? 'RTNETLINK answers: Permission denied' : undefined));
  const result = await executePlan(dp.plan(desired, state(k)), { runner: k.runner });
  t.deepEqual(
    result.errors.map((e) => e.message),
    [`endpoint 409700000000 of network aaaaaaaaaaaa: cannot set address 10.0.1.2/24 on eth0 in netns c1: Permission denied`],
  );
  t.is(k.ns(`${PREFIX}-${NET_A}`).links.get('ve409700000000')?.alias, undefined);
  t.truthy(k.ns(`${PREFIX}-${NET_B}`).links.get('ve409800000000')?.alias);
  k.failWhen.length = 0;
  const retry = dp.plan(desired, state(k));
  const retryLines = retry.stages.flatMap((s) => s.batches.flatMap((b) => b.ops.map((o) => o.line)));
  t.true(retryLines.includes('link del dev ve409700000000'));
  t.true(retryLines.some((l) => l.startsWith('link add name ve409700000000')));
  const fixed = await executePlan(retry, { runner: k.runner });
  t.deepEqual(fixed.errors, []);
  t.is(dp.plan(desired, state(k)).changes, 0);
});

test('one error per object: a failure inside a batch does not also report the lines that depended on it', async (t) => {
  const k = new FakeKernel([HOST, 'c1', 'c2']);
  k.failWhen.push((line, ns) => (ns === `${PREFIX}-${NET_B}` && line.startsWith('link add name br0') ? 'RTNETLINK answers: Operation not supported' : undefined));
  const result = await executePlan(dp.plan(desired, state(k)), { runner: k.runner });
  t.deepEqual(
    result.errors.map((e) => e.message),
    [`network bbbbbbbbbbbb: cannot create bridge br0 in netns ${PREFIX}-${NET_B}: Operation not supported`],
  );
  t.true(result.failedKeys.has(`bridge:${NET_B}`));
  t.true(result.failedKeys.has(`vxlan:${NET_B}`), 'attaching vxlan0 needed br0');
  t.false([...result.failedKeys].some((key) => key.includes(NET_A)));
});

test('a batch that dies as a whole (timeout, unreadable namespace) fails all its lines with one error', async (t) => {
  const k = new FakeKernel([HOST, 'c1', 'c2']);
  const runner: typeof k.runner = async (tool, netns, lines, o) =>
    netns.kind === 'name' && netns.name === HOST ? { failures: new Map(), fatal: 'timed out after 20000 ms' } : k.runner(tool, netns, lines, o);
  const result = await executePlan(dp.plan(desired, state(k)), { runner });
  t.is(result.errors.length, 1);
  t.is(result.errors[0]!.code, 'KVNET_DATAPLANE_COMMAND_FAILED');
  t.regex(result.errors[0]!.message, /ip -batch \(4 lines, first: link add name vxlan0 .*\) failed: timed out after 20000 ms/);
  t.false(k.log.some((l) => l.includes('alias')), 'no endpoint was marked complete');
});
