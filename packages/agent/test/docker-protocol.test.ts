/** The plugin protocol as pure logic: dispatch, validation and the error field Docker reads. */

import test from 'ava';
import { dispatchPluginCall, errorField, PLUGIN_METHODS, type PluginHandlers } from '../src/docker/protocol.ts';
import { NotFoundError } from '../src/errors.ts';

function handlers(calls: Array<[string, unknown]> = []): PluginHandlers {
  const rec = (name: string) => async (req: unknown) => {
    calls.push([name, req]);
    return undefined as never;
  };
  return {
    networkCapabilities: () => ({ Scope: 'local', ConnectivityScope: 'global' }),
    createNetwork: rec('createNetwork'),
    deleteNetwork: async () => {
      throw new NotFoundError('no such network: n1');
    },
    createEndpoint: async (req) => (calls.push(['createEndpoint', req]), { Interface: { MacAddress: '02:42:0a:00:00:02' } }),
    deleteEndpoint: rec('deleteEndpoint'),
    endpointOperInfo: async () => ({}),
    join: async (req) => (calls.push(['join', req]), { InterfaceName: { SrcName: 'kvd0123', DstPrefix: 'eth' } }),
    leave: rec('leave'),
    ipamCapabilities: () => ({ RequiresMACAddress: false, RequiresRequestReplay: false }),
    defaultAddressSpaces: () => ({ LocalDefaultAddressSpace: 'kvnet', GlobalDefaultAddressSpace: 'kvnet' }),
    requestPool: async (req) => (calls.push(['requestPool', req]), { PoolID: 'p1', Pool: '10.0.0.0/24', Data: {} }),
    releasePool: rec('releasePool'),
    requestAddress: async () => {
      throw new Error('no free address in pool 10.0.0.0/24');
    },
    releaseAddress: rec('releaseAddress'),
  };
}

test('Activate and the capability calls answer with empty bodies', async (t) => {
  const h = handlers();
  t.deepEqual(await dispatchPluginCall('Plugin.Activate', '', h), { status: 200, body: { Implements: ['NetworkDriver', 'IpamDriver'] } });
  t.deepEqual((await dispatchPluginCall('NetworkDriver.GetCapabilities', '', h)).body, { Scope: 'local', ConnectivityScope: 'global' });
  t.deepEqual((await dispatchPluginCall('IpamDriver.GetCapabilities', '', h)).body, { RequiresMACAddress: false, RequiresRequestReplay: false });
  t.deepEqual((await dispatchPluginCall('IpamDriver.GetDefaultAddressSpaces', '', h)).body, { LocalDefaultAddressSpace: 'kvnet', GlobalDefaultAddressSpace: 'kvnet' });
});

test('every method of both APIs is served', (t) => {
  const expected = [
    'Plugin.Activate',
    ...['GetCapabilities', 'CreateNetwork', 'DeleteNetwork', 'CreateEndpoint', 'DeleteEndpoint', 'EndpointOperInfo', 'Join', 'Leave', 'DiscoverNew', 'DiscoverDelete', 'ProgramExternalConnectivity', 'RevokeExternalConnectivity'].map((m) => `NetworkDriver.${m}`),
    ...['GetCapabilities', 'GetDefaultAddressSpaces', 'RequestPool', 'ReleasePool', 'RequestAddress', 'ReleaseAddress'].map((m) => `IpamDriver.${m}`),
  ];
  t.deepEqual(Object.keys(PLUGIN_METHODS).sort(), expected.sort());
});

test('Docker-encoded requests are parsed (Go nulls, trailing newline, extra fields)', async (t) => {
  const calls: Array<[string, unknown]> = [];
  const h = handlers(calls);
  const body =
    JSON.stringify({
      NetworkID: 'n1',
      Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': { myopt: 'foo' } },
      IPv4Data: [{ AddressSpace: 'kvnet', AuxAddresses: { r1: '10.77.0.5/24' }, Gateway: '10.77.0.1/24', Pool: '10.77.0.0/24' }],
      IPv6Data: null,
      Unknown: 1,
    }) + '\n';
  t.deepEqual(await dispatchPluginCall('NetworkDriver.CreateNetwork', body, h), { status: 200, body: {} });
  t.like(calls[0]![1], { NetworkID: 'n1', IPv6Data: [], IPv4Data: [{ Pool: '10.77.0.0/24', Gateway: '10.77.0.1/24' }] });

  const ep = await dispatchPluginCall('NetworkDriver.CreateEndpoint', JSON.stringify({ NetworkID: 'n1', EndpointID: 'e1', Interface: { Address: '10.77.0.2/24', AddressIPv6: '', MacAddress: '' }, Options: null }), h);
  t.deepEqual(ep.body, { Interface: { MacAddress: '02:42:0a:00:00:02' } });
  const join = await dispatchPluginCall('NetworkDriver.Join', JSON.stringify({ NetworkID: 'n1', EndpointID: 'e1', SandboxKey: '/var/run/docker/netns/x', Options: {} }), h);
  t.deepEqual(join.body, { InterfaceName: { SrcName: 'kvd0123', DstPrefix: 'eth' } });
  const pool = await dispatchPluginCall('IpamDriver.RequestPool', JSON.stringify({ AddressSpace: 'kvnet', Pool: '', SubPool: '', Options: {}, V6: false }), h);
  t.deepEqual(pool.body, { PoolID: 'p1', Pool: '10.0.0.0/24', Data: {} });
  t.deepEqual((await dispatchPluginCall('NetworkDriver.DiscoverNew', JSON.stringify({ DiscoveryType: 1, DiscoveryData: { Address: '10.0.0.1', BindAddress: '', Self: true } }), h)).body, {});
  t.deepEqual((await dispatchPluginCall('NetworkDriver.ProgramExternalConnectivity', JSON.stringify({ NetworkID: 'n1', EndpointID: 'e1', Options: {} }), h)).body, {});
});

test('unknown methods answer 404', async (t) => {
  const r = await dispatchPluginCall('NetworkDriver.AllocateNetwork', '{}', handlers());
  t.is(r.status, 404);
  t.regex(String(r.body.Err), /unknown method NetworkDriver.AllocateNetwork/);
  t.is((await dispatchPluginCall('constructor', '{}', handlers())).status, 404);
  t.is((await dispatchPluginCall('__proto__', '{}', handlers())).status, 404);
});

test('malformed and invalid bodies are answered in Err (network) or Error (IPAM)', async (t) => {
  const h = handlers();
  const bad = await dispatchPluginCall('NetworkDriver.CreateNetwork', '{"NetworkID":', h);
  t.is(bad.status, 200);
  t.regex(String(bad.body.Err), /NetworkDriver.CreateNetwork: malformed JSON body/);
  const missing = await dispatchPluginCall('NetworkDriver.Join', '{"NetworkID":"n1"}', h);
  t.regex(String(missing.body.Err), /invalid request \(EndpointID: /);
  const empty = await dispatchPluginCall('IpamDriver.RequestAddress', '', h);
  t.is(empty.body.Err, undefined);
  t.regex(String(empty.body.Error), /IpamDriver.RequestAddress: invalid request/);
  const wrongType = await dispatchPluginCall('IpamDriver.RequestPool', '{"V6":"yes"}', h);
  t.regex(String(wrongType.body.Error), /V6: /);
  t.is(errorField('IpamDriver.ReleasePool'), 'Error');
  t.is(errorField('NetworkDriver.Leave'), 'Err');
});

test('handler errors keep their message, in the field Docker reads', async (t) => {
  const h = handlers();
  t.deepEqual((await dispatchPluginCall('NetworkDriver.DeleteNetwork', '{"NetworkID":"n1"}', h)).body, { Err: 'no such network: n1' });
  t.deepEqual((await dispatchPluginCall('IpamDriver.RequestAddress', '{"PoolID":"p1","Address":"","Options":null}', h)).body, { Error: 'no free address in pool 10.0.0.0/24' });
});
