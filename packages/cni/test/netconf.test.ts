import test from 'ava';
import { CniError } from '../src/errors.ts';
import { checkUnsupported, parseCniArgs, parseCommand, parseEnv, parseNetConf, requestedAddress, requestedName, versionOf } from '../src/netconf.ts';
import { ErrorCode } from '../src/spec.ts';

/** The CniError `fn` throws: its code and message. */
const refusal = (fn: () => unknown): { code: number; message: string } => {
  try {
    fn();
  } catch (err) {
    if (err instanceof CniError) return { code: err.cniCode, message: err.message };
    throw err;
  }
  throw new Error('did not throw');
};

const conf = (extra: Record<string, unknown> = {}): string => JSON.stringify({ cniVersion: '1.0.0', name: 'multi', type: 'kvnet', ...extra });

test('a minimal configuration: the kvnet network defaults to the configuration name, the socket to /run/kvnet/kvnet.sock', (t) => {
  const c = parseNetConf(conf(), 'ADD');
  t.is(c.cniVersion, '1.0.0');
  t.is(c.name, 'multi');
  t.is(c.network, 'multi');
  t.is(c.socket, '/run/kvnet/kvnet.sock');
  t.deepEqual(c.runtimeConfig, {});
  const d = parseNetConf(conf({ network: 'other', socket: '/run/h1/kvnet.sock', dns: { nameservers: ['10.0.0.2'] } }), 'ADD');
  t.is(d.network, 'other');
  t.is(d.socket, '/run/h1/kvnet.sock');
  t.deepEqual(d.dns, { nameservers: ['10.0.0.2'] });
});

test('stdin that is not a JSON object is a decoding failure (6) that quotes it', (t) => {
  const e = refusal(() => parseNetConf('{"cniVersion": ', 'ADD'));
  t.is(e.code, ErrorCode.DECODING_FAILURE);
  t.regex(e.message, /not JSON/);
  t.is(refusal(() => parseNetConf('[1,2]', 'ADD')).code, ErrorCode.DECODING_FAILURE);
  t.is(refusal(() => parseNetConf('', 'DEL')).code, ErrorCode.DECODING_FAILURE);
  t.is(refusal(() => parseNetConf(conf({ prevResult: 'x' }), 'DEL')).code, ErrorCode.DECODING_FAILURE);
});

test('versions: 0.3.0 … 1.1.0 are accepted, others are incompatible (1) and named', (t) => {
  for (const v of ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) t.is(parseNetConf(conf({ cniVersion: v }), 'ADD').cniVersion as string, v);
  const e = refusal(() => parseNetConf(conf({ cniVersion: '0.2.0' }), 'ADD'));
  t.is(e.code, ErrorCode.INCOMPATIBLE_VERSION);
  t.regex(e.message, /cniVersion "0\.2\.0" is not supported/);
  t.is(refusal(() => parseNetConf(conf({ cniVersion: undefined }), 'ADD')).code, ErrorCode.INCOMPATIBLE_VERSION);
  t.is(versionOf('{"cniVersion":"0.4.0"}'), '0.4.0');
  t.is(versionOf('{"cniVersion":"9.9.9"}'), '1.1.0');
  t.is(versionOf(''), '1.1.0');
});

test('bad fields are named with their values: name, network, socket (7); ipam is unsupported (2)', (t) => {
  t.regex(refusal(() => parseNetConf(conf({ name: '-x' }), 'ADD')).message, /name "-x"/);
  const net = refusal(() => parseNetConf(conf({ network: 5 }), 'ADD'));
  t.is(net.code, ErrorCode.INVALID_NETWORK_CONFIG);
  t.regex(net.message, /network 5 must name a kvnet network/);
  const sock = refusal(() => parseNetConf(conf({ socket: 'kvnet.sock' }), 'ADD'));
  t.is(sock.code, ErrorCode.INVALID_NETWORK_CONFIG);
  t.regex(sock.message, /socket "kvnet\.sock" must be the absolute path/);
  const ipam = refusal(() => parseNetConf(conf({ ipam: { type: 'host-local' } }), 'ADD'));
  t.is(ipam.code, ErrorCode.UNSUPPORTED_FIELD);
  t.regex(ipam.message, /unsupported field ipam \{"type":"host-local"\}/);
});

test('GC: the valid attachments under either name; none given means none are valid (libcni without a list)', (t) => {
  const list = [{ containerID: 'c1', ifname: 'eth0' }];
  t.deepEqual(parseNetConf(conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': list }), 'GC').validAttachments, [{ containerId: 'c1', ifname: 'eth0' }]);
  t.deepEqual(parseNetConf(conf({ cniVersion: '1.1.0', 'cni.dev/attachments': list }), 'GC').validAttachments, [{ containerId: 'c1', ifname: 'eth0' }]);
  t.deepEqual(parseNetConf(conf({ cniVersion: '1.1.0' }), 'GC').validAttachments, []);
  t.is(refusal(() => parseNetConf(conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 1 }] }), 'GC')).code, ErrorCode.INVALID_NETWORK_CONFIG);
});

test('environment: CNI_COMMAND, and per verb the variables the spec requires, are named when missing or bad (4)', (t) => {
  t.is(parseCommand({ CNI_COMMAND: 'ADD' }), 'ADD');
  t.is(refusal(() => parseCommand({})).code, ErrorCode.INVALID_ENVIRONMENT);
  t.regex(refusal(() => parseCommand({ CNI_COMMAND: 'FOO' })).message, /CNI_COMMAND=FOO is not a CNI verb/);
  const add = refusal(() => parseEnv({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1' }, 'ADD'));
  t.is(add.code, ErrorCode.INVALID_ENVIRONMENT);
  t.regex(add.message, /needs CNI_NETNS, CNI_IFNAME/);
  t.notThrows(() => parseEnv({ CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0' }, 'DEL'));
  t.regex(refusal(() => parseEnv({ CNI_CONTAINERID: '-c', CNI_NETNS: '/n', CNI_IFNAME: 'eth0' }, 'ADD')).message, /CNI_CONTAINERID="-c"/);
  t.regex(refusal(() => parseEnv({ CNI_CONTAINERID: 'c', CNI_NETNS: 'n', CNI_IFNAME: 'eth0' }, 'ADD')).message, /CNI_NETNS="n"/);
  t.regex(refusal(() => parseEnv({ CNI_CONTAINERID: 'c', CNI_NETNS: '/n', CNI_IFNAME: 'a/b' }, 'ADD')).message, /CNI_IFNAME="a\/b"/);
  t.regex(refusal(() => parseEnv({ CNI_CONTAINERID: 'c', CNI_NETNS: '/n', CNI_IFNAME: 'averyveryverylongname' }, 'ADD')).message, /CNI_IFNAME/);
  t.deepEqual(parseEnv({}, 'STATUS').args, new Map());
});

test('CNI_ARGS: pairs parsed; a part without = is refused (4); unknown keys need IgnoreUnknown (2)', (t) => {
  t.deepEqual([...parseCniArgs('IgnoreUnknown=1;K8S_POD_NAME=web;;IP=10.0.0.5')], [['IgnoreUnknown', '1'], ['K8S_POD_NAME', 'web'], ['IP', '10.0.0.5']]);
  t.is(refusal(() => parseCniArgs('FOO')).code, ErrorCode.INVALID_ENVIRONMENT);
  const c = parseNetConf(conf(), 'ADD');
  const env = (args: string) => parseEnv({ CNI_CONTAINERID: 'c', CNI_NETNS: '/n', CNI_IFNAME: 'eth0', CNI_ARGS: args }, 'ADD');
  const unknown = refusal(() => checkUnsupported(c, env('FOO=bar')));
  t.is(unknown.code, ErrorCode.UNSUPPORTED_FIELD);
  t.regex(unknown.message, /unsupported CNI_ARGS FOO=bar for network multi/);
  t.notThrows(() => checkUnsupported(c, env('IgnoreUnknown=true;FOO=bar')));
  const mac = refusal(() => checkUnsupported(c, env('MAC=02:00:00:00:00:01')));
  t.is(mac.code, ErrorCode.UNSUPPORTED_FIELD);
  t.regex(mac.message, /unsupported field mac "02:00:00:00:00:01"/);
  t.is(refusal(() => checkUnsupported(parseNetConf(conf({ runtimeConfig: { mac: 'x' } }), 'ADD'), env(''))).code, ErrorCode.UNSUPPORTED_FIELD);
});

test('a requested address: runtimeConfig.ips before args.cni.ips before CNI_ARGS IP; one IPv4, prefix optional', (t) => {
  const env = (args = '') => parseEnv({ CNI_CONTAINERID: 'c', CNI_NETNS: '/n', CNI_IFNAME: 'eth0', CNI_ARGS: args }, 'ADD');
  t.is(requestedAddress(parseNetConf(conf(), 'ADD'), env()), undefined);
  t.deepEqual(requestedAddress(parseNetConf(conf(), 'ADD'), env('IP=10.0.1.5')), { ip: '10.0.1.5', from: 'CNI_ARGS IP' });
  t.deepEqual(requestedAddress(parseNetConf(conf({ args: { cni: { ips: ['10.0.1.6/24'] } } }), 'ADD'), env('IP=10.0.1.5')), { ip: '10.0.1.6', prefixLength: 24, from: 'args.cni.ips' });
  t.deepEqual(requestedAddress(parseNetConf(conf({ runtimeConfig: { ips: ['10.0.1.7'] }, args: { cni: { ips: ['10.0.1.6'] } } }), 'ADD'), env()), { ip: '10.0.1.7', from: 'runtimeConfig.ips' });
  const two = refusal(() => requestedAddress(parseNetConf(conf({ runtimeConfig: { ips: ['10.0.1.7', '10.0.1.8'] } }), 'ADD'), env()));
  t.is(two.code, ErrorCode.UNSUPPORTED_FIELD);
  t.regex(two.message, /runtimeConfig\.ips \["10\.0\.1\.7","10\.0\.1\.8"\].*one IPv4 address/);
  const bad = refusal(() => requestedAddress(parseNetConf(conf(), 'ADD'), env('IP=10.0.1.300')));
  t.is(bad.code, ErrorCode.INVALID_NETWORK_CONFIG);
  t.regex(bad.message, /invalid address "10\.0\.1\.300" in CNI_ARGS IP for network multi/);
  t.is(refusal(() => requestedAddress(parseNetConf(conf(), 'ADD'), env('IP=2001:db8::5'))).code, ErrorCode.INVALID_NETWORK_CONFIG);
  t.is(refusal(() => requestedAddress(parseNetConf(conf(), 'ADD'), env('IP=10.0.1.5/33'))).code, ErrorCode.INVALID_NETWORK_CONFIG);
});

test('the endpoint name: runtimeConfig.name, args.cni.name, then K8S_POD_NAME (podman); checked like kvnet names', (t) => {
  const env = (args = '') => parseEnv({ CNI_CONTAINERID: 'c', CNI_NETNS: '/n', CNI_IFNAME: 'eth0', CNI_ARGS: args }, 'ADD');
  t.is(requestedName(parseNetConf(conf(), 'ADD'), env()), undefined);
  t.is(requestedName(parseNetConf(conf(), 'ADD'), env('IgnoreUnknown=1;K8S_POD_NAME=web1')), 'web1');
  t.is(requestedName(parseNetConf(conf({ args: { cni: { name: 'db' } } }), 'ADD'), env('K8S_POD_NAME=web1')), 'db');
  t.is(requestedName(parseNetConf(conf({ runtimeConfig: { name: 'api' }, args: { cni: { name: 'db' } } }), 'ADD'), env()), 'api');
  const bad = refusal(() => requestedName(parseNetConf(conf(), 'ADD'), env('K8S_POD_NAME=-web')));
  t.is(bad.code, ErrorCode.INVALID_NETWORK_CONFIG);
  t.regex(bad.message, /invalid endpoint name "-web" in CNI_ARGS K8S_POD_NAME for network multi/);
});
