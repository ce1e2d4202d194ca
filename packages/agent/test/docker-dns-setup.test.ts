/**
 * Whether dockerd's containers will reach kvnet's resolver (docker/dns-setup.ts): the assessment is
 * pure; reading dockerd's flags and daemon.json is tested on a process tree laid out in a temp dir the
 * way /proc shows one (the real dockerd case is in test/docker/names-docker.test.ts).
 */

import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assessDockerDns, parseDockerdArgs, readDaemonDns, servesSocket } from '../src/docker/dns-setup.ts';

const ADDR = '169.254.53.53';

test('assessment: dns present → nothing; missing → an error naming the address and daemon.json; unknown → info', (t) => {
  t.deepEqual(assessDockerDns({ version: '28.5.2', dns: [ADDR, '1.1.1.1'], dnsSource: 'x' }, ADDR), []);
  const missing = assessDockerDns({ version: '28.5.2', dns: ['1.1.1.1'], dnsSource: 'dockerd (pid 7) command line' }, ADDR);
  t.is(missing.length, 1);
  t.like(missing[0], { level: 'error', code: 'KVNET_DOCKER_DNS_MISSING' });
  t.regex(missing[0]!.message, /169\.254\.53\.53.*\["1\.1\.1\.1"\].*"dns": \["169\.254\.53\.53"\].*daemon\.json/);
  t.regex(assessDockerDns({ version: '28.5.2', dns: [], dnsSource: 'x' }, ADDR)[0]!.message, /it has no dns setting/);
  t.like(assessDockerDns({ version: '20.10.24', dnsSource: 'no dockerd process' }, ADDR)[0], { level: 'info', code: 'KVNET_DOCKER_DNS_UNKNOWN' });
});

test('assessment: Docker 26.0.0–26.1.2 never forward internal-only containers; 25.0.4, 26.1.3 and 28 are fine', (t) => {
  for (const v of ['26.0.0', '26.0.2', '26.1.2']) {
    const f = assessDockerDns({ version: v, dns: [ADDR], dnsSource: 'x' }, ADDR);
    t.is(f.length, 1, v);
    t.like(f[0], { level: 'warn', code: 'KVNET_DOCKER_INTERNAL_DNS' });
    t.regex(f[0]!.message, new RegExp(`Docker ${v.replace(/\./g, '\\.')} .*--internal.*26\\.1\\.3`));
  }
  for (const v of ['25.0.4', '26.1.3', '28.5.2', '29.8.1', '20.10.24+dfsg1']) t.deepEqual(assessDockerDns({ version: v, dns: [ADDR], dnsSource: 'x' }, ADDR), [], v);
});

test('assessment: an ndots option in the containers\' resolv.conf is an error naming its source and the daemon.json remedy', (t) => {
  const f = assessDockerDns({ version: '28.5.2', dns: [ADDR], dnsSource: 'x', ndots: { option: 'ndots:0', from: "the host's /etc/resolv.conf" } }, ADDR);
  t.is(f.length, 1);
  t.like(f[0], { level: 'error', code: 'KVNET_DOCKER_DNS_NDOTS' });
  t.regex(f[0]!.message, /"options ndots:0" \(from the host's \/etc\/resolv\.conf\).*single-label names.*"dns-opts": \["timeout:5"\]/);
});

test('dockerd arguments and which socket it serves', (t) => {
  t.deepEqual(parseDockerdArgs(['-H', 'unix:///tmp/d.sock', '--dns', '169.254.53.53', '--dns=9.9.9.9', '--config-file=/etc/x.json', '--data-root', '/d']), {
    hosts: ['unix:///tmp/d.sock'], dns: ['169.254.53.53', '9.9.9.9'], dnsOpts: [], configFile: '/etc/x.json',
  });
  t.true(servesSocket([], '/var/run/docker.sock'));
  t.true(servesSocket(['fd://'], '/run/docker.sock'), 'systemd socket activation serves the default socket');
  t.false(servesSocket([], '/tmp/other.sock'));
  t.true(servesSocket(['tcp://0.0.0.0:2375', 'unix:///tmp/d.sock'], '/tmp/d.sock'));
});

test('readDaemonDns: the dockerd serving the socket, its flags and its daemon.json (read through its root)', (t) => {
  const proc = mkdtempSync(join(tmpdir(), 'kvnet-proc-'));
  t.teardown(() => rmSync(proc, { recursive: true, force: true }));
  const pid = (n: number, argv: string[], daemonJson?: string): void => {
    mkdirSync(join(proc, String(n), 'root', 'etc', 'docker'), { recursive: true });
    writeFileSync(join(proc, String(n), 'cmdline'), argv.join('\0') + '\0');
    if (daemonJson !== undefined) writeFileSync(join(proc, String(n), 'root', 'etc', 'docker', 'daemon.json'), daemonJson);
  };
  pid(10, ['/usr/bin/containerd']);
  pid(11, ['/usr/sbin/dockerd', '-H', 'unix:///tmp/other.sock', '--dns', '1.2.3.4']);
  pid(12, ['/usr/sbin/dockerd', '-H', 'fd://'], JSON.stringify({ dns: [ADDR, '8.8.8.8'], 'log-level': 'info' }));
  writeFileSync(join(proc, 'self'), '');
  const r = readDaemonDns('/var/run/docker.sock', proc);
  t.deepEqual(r.dns, [ADDR, '8.8.8.8']);
  t.regex(r.source, /pid 12.*\/etc\/docker\/daemon\.json/);
  t.deepEqual(readDaemonDns('/tmp/other.sock', proc).dns, ['1.2.3.4'], 'flags only, no daemon.json');
  t.is(readDaemonDns('/tmp/none.sock', proc).dns, undefined);
  t.regex(readDaemonDns('/tmp/none.sock', proc).source, /no dockerd process serving \/tmp\/none\.sock/);
  pid(13, ['/usr/sbin/dockerd', '-H', 'unix:///tmp/bad.sock'], '{bad');
  t.regex(readDaemonDns('/tmp/bad.sock', proc).source, /cannot be read/);

  // ndots: from the host's resolv.conf (as dockerd sees it), unless dockerd's own dns-opts replace the options
  const conf = (n: number, text: string, at = '/etc/resolv.conf'): void => {
    mkdirSync(join(proc, String(n), 'root', at, '..'), { recursive: true });
    writeFileSync(join(proc, String(n), 'root', at), text);
  };
  conf(12, 'nameserver 127.0.0.11\noptions ndots:0\n');
  t.deepEqual(readDaemonDns('/var/run/docker.sock', proc).ndots, { option: 'ndots:0', from: "the host's /etc/resolv.conf" });
  pid(14, ['/usr/sbin/dockerd', '-H', 'unix:///tmp/o.sock'], JSON.stringify({ dns: [ADDR], 'dns-opts': ['timeout:5'] }));
  conf(14, 'nameserver 127.0.0.11\noptions ndots:0\n');
  t.is(readDaemonDns('/tmp/o.sock', proc).ndots, undefined, 'dns-opts without ndots replace the host\'s options');
  pid(15, ['/usr/sbin/dockerd', '-H', 'unix:///tmp/r.sock', '--dns-opt', 'ndots:2']);
  t.deepEqual(readDaemonDns('/tmp/r.sock', proc).ndots, { option: 'ndots:2', from: "dockerd's dns-opts" });
  pid(16, ['/usr/sbin/dockerd', '-H', 'unix:///tmp/s.sock']);
  conf(16, 'nameserver 127.0.0.53\noptions edns0 trust-ad\n');
  conf(16, 'nameserver 10.0.0.2\noptions ndots:5\n', '/run/systemd/resolve/resolv.conf');
  t.deepEqual(readDaemonDns('/tmp/s.sock', proc).ndots, { option: 'ndots:5', from: "the host's /run/systemd/resolve/resolv.conf" }, 'behind systemd-resolved\'s stub, the real file');
});
