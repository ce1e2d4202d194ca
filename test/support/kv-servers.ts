/**
 * Real KV servers for tests and benchmarks: etcd and ZooKeeper from Debian's packages, Consul built
 * from the Go module proxy (`scripts/install-consul.sh`). Each server listens on loopback (or inside a
 * given network namespace) on free ports, keeps its data in a temp dir, and can be stopped and started
 * again with its data intact, frozen (SIGSTOP) and killed. Everything is removed when the test
 * process exits.
 */

import type { TestFn } from 'ava';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, makeTempDir, removeTempDir, startProcess, waitFor, waitForPort, run, type ManagedProcess } from './process.ts';

export type ServerBackend = 'etcd' | 'consul' | 'zookeeper';

export interface KvServer {
  readonly backend: ServerBackend;
  readonly host: string;
  readonly port: number;
  /** A `--cluster-store` URL for this server with the given key prefix. */
  url(prefix: string): string;
  /** Graceful stop; data is kept for {@link start}. */
  stop(): Promise<void>;
  /** Starts again on the same port with the same data. */
  start(): Promise<void>;
  /** SIGKILL; data is kept. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT: the server stops answering without closing connections. */
  pause(): void;
  resume(): void;
  /** Stops the server and deletes its data. */
  dispose(): Promise<void>;
  /** The server's log so far, for failure messages. */
  log(): string;
}

export interface ServerOptions {
  /** Network namespace (name under /run/netns) to run in; the server binds `host` there. */
  readonly netns?: string;
  /** Address to bind; 127.0.0.1 by default. */
  readonly host?: string;
  /** etcd only: serve TLS with these files and require client certificates signed by `caFile`. */
  readonly tls?: { caFile: string; certFile: string; keyFile: string };
  /** etcd only: also serve the v2 API (`--enable-v2`), which dockerd 20.10's `--cluster-store etcd://` speaks. */
  readonly enableV2?: boolean;
  /**
   * Consul only: keep Prometheus metrics (`/v1/agent/metrics?format=prometheus`), whose counters are
   * cumulative; Consul's default JSON metrics cover only the current 10 s interval. etcd's `/metrics`
   * always is.
   */
  readonly prometheus?: boolean;
  /**
   * Run the server at this nice value (`nice -n`; negative needs root). Benchmarks that put a hundred
   * agents on two cores give the server priority: in a real cluster it has machines of its own.
   */
  readonly nice?: number;
}

export const CONSUL_VERSION = 'v1.22.5';

/** Where the Consul binary is: $KVNET_CONSUL_BIN, the install script's cache, or PATH. */
export function consulBinary(): string | undefined {
  const candidates = [
    process.env.KVNET_CONSUL_BIN,
    `/var/cache/kvnet/consul-${CONSUL_VERSION}/consul`,
    '/usr/local/bin/consul',
    '/usr/bin/consul',
  ];
  return candidates.find((c): c is string => !!c && existsSync(c));
}

export async function startServer(backend: ServerBackend, options: ServerOptions = {}): Promise<KvServer> {
  switch (backend) {
    case 'etcd':
      return startEtcd(options);
    case 'consul':
      return startConsul(options);
    case 'zookeeper':
      return startZookeeper(options);
  }
}

interface Launch {
  command: string;
  args: string[];
  ready: () => Promise<void>;
}

async function managed(
  backend: ServerBackend,
  host: string,
  port: number,
  dir: string,
  options: ServerOptions,
  launch: () => Launch,
  scheme: string,
): Promise<KvServer> {
  let proc: ManagedProcess | undefined;
  const logFile = join(dir, `${backend}.log`);
  const begin = async (): Promise<void> => {
    const l = launch();
    const [command, args] = options.nice !== undefined ? ['nice', ['-n', String(options.nice), l.command, ...l.args]] : [l.command, l.args];
    proc = startProcess(backend, command, args, { logFile, ...(options.netns ? { netns: options.netns } : {}) });
    try {
      await l.ready();
    } catch (err) {
      await proc.kill();
      throw new Error(`${backend} did not start: ${(err as Error).message}\n--- log ---\n${proc.log().slice(-3000)}`);
    }
  };
  await begin();
  const server: KvServer = {
    backend,
    host,
    port,
    url: (prefix) => `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}/${prefix}`,
    async stop() {
      await proc?.stop(10_000);
    },
    async start() {
      await begin();
    },
    async kill() {
      await proc?.kill();
    },
    pause() {
      proc?.signal('SIGSTOP');
    },
    resume() {
      proc?.signal('SIGCONT');
    },
    async dispose() {
      proc?.signal('SIGCONT');
      await proc?.stop(5_000);
      removeTempDir(dir);
    },
    log() {
      return proc?.log() ?? '';
    },
  };
  return server;
}

async function startEtcd(options: ServerOptions): Promise<KvServer> {
  const host = options.host ?? '127.0.0.1';
  const port = await freePort();
  const peerPort = await freePort();
  const dir = makeTempDir('etcd');
  const tls = options.tls;
  const clientScheme = tls ? 'https' : 'http';
  return managed(
    'etcd',
    host,
    port,
    dir,
    options,
    () => ({
      command: 'etcd',
      args: [
        '--name', 'kvnet-test',
        '--data-dir', join(dir, 'data'),
        '--listen-client-urls', `${clientScheme}://${host}:${port}`,
        '--advertise-client-urls', `${clientScheme}://${host}:${port}`,
        '--listen-peer-urls', `http://${host}:${peerPort}`,
        '--initial-advertise-peer-urls', `http://${host}:${peerPort}`,
        '--initial-cluster', `kvnet-test=http://${host}:${peerPort}`,
        '--log-level', 'warn',
        ...(options.enableV2 ? ['--enable-v2'] : []),
        ...(tls ? ['--cert-file', tls.certFile, '--key-file', tls.keyFile, '--trusted-ca-file', tls.caFile, '--client-cert-auth'] : []),
      ],
      ready: () => waitForPort(host, port, 20_000, options.netns),
    }),
    'etcd',
  );
}

async function startConsul(options: ServerOptions): Promise<KvServer> {
  const bin = consulBinary();
  if (!bin) {
    throw new Error(
      `no Consul binary: run scripts/install-consul.sh (builds ${CONSUL_VERSION} from the Go module proxy) or set KVNET_CONSUL_BIN`,
    );
  }
  const host = options.host ?? '127.0.0.1';
  const port = await freePort();
  const [serfLan, serfWan, serverPort] = [await freePort(), await freePort(), await freePort()];
  const dir = makeTempDir('consul');
  mkdirSync(join(dir, 'data'), { recursive: true });
  // session_ttl_min lowered so lease tests do not wait the 10 s default; kvnet copes with either.
  writeFileSync(
    join(dir, 'config.hcl'),
    [
      'session_ttl_min = "1s"',
      'disable_update_check = true',
      'performance { raft_multiplier = 1 }',
      'limits { http_max_conns_per_client = 1000 }',
      ...(options.prometheus ? ['telemetry {', '  prometheus_retention_time = "24h"', '  disable_hostname = true', '}'] : []),
    ].join('\n'),
  );
  const leaderUp = async (): Promise<void> => {
    await waitForPort(host, port, 30_000, options.netns);
    await waitFor(
      'a Consul leader',
      async () => {
        const r = await run('curl', ['-sf', `http://${host}:${port}/v1/status/leader`], {
          allowFailure: true,
          ...(options.netns ? { netns: options.netns } : {}),
        });
        return r.code === 0 && /"[^"]+"/.test(r.stdout);
      },
      30_000,
      200,
    );
    // A write proves the KV endpoint works (right after election it can still refuse).
    await waitFor(
      'a writable Consul KV',
      async () => {
        const r = await run('curl', ['-sf', '-X', 'PUT', '--data', 'x', `http://${host}:${port}/v1/kv/kvnet-probe`], {
          allowFailure: true,
          ...(options.netns ? { netns: options.netns } : {}),
        });
        return r.code === 0 && r.stdout.includes('true');
      },
      30_000,
      200,
    );
  };
  return managed(
    'consul',
    host,
    port,
    dir,
    options,
    () => ({
      command: bin,
      args: [
        'agent', '-server', '-bootstrap-expect=1',
        '-node', 'kvnet-test', '-datacenter', 'dc1',
        '-data-dir', join(dir, 'data'),
        '-config-file', join(dir, 'config.hcl'),
        '-bind', host, '-advertise', host, '-client', host,
        '-http-port', String(port), '-dns-port', '-1', '-grpc-port', '-1', '-grpc-tls-port', '-1',
        '-serf-lan-port', String(serfLan), '-serf-wan-port', String(serfWan), '-server-port', String(serverPort),
        '-log-level', 'warn',
      ],
      ready: leaderUp,
    }),
    'consul',
  );
}

async function startZookeeper(options: ServerOptions): Promise<KvServer> {
  const host = options.host ?? '127.0.0.1';
  const port = await freePort();
  const dir = makeTempDir('zk');
  mkdirSync(join(dir, 'data'), { recursive: true });
  const cfg = join(dir, 'zoo.cfg');
  // tickTime 500 ms lets sessions range from 1 s to 60 s (kvnet's lease TTLs).
  writeFileSync(
    cfg,
    [
      'tickTime=500',
      'initLimit=10',
      'syncLimit=5',
      `dataDir=${join(dir, 'data')}`,
      `clientPort=${port}`,
      `clientPortAddress=${host}`,
      'minSessionTimeout=1000',
      'maxSessionTimeout=60000',
      'maxClientCnxns=0',
      'admin.enableServer=false',
      '4lw.commands.whitelist=ruok,srvr,mntr',
      'jute.maxbuffer=4194304',
    ].join('\n'),
  );
  return managed(
    'zookeeper',
    host,
    port,
    dir,
    options,
    () => ({
      command: 'java',
      args: [
        '-Xmx256m',
        '-XX:+UseSerialGC',
        '-Djute.maxbuffer=4194304',
        `-Dzookeeper.log.dir=${dir}`,
        '-cp',
        '/usr/share/java/*:/etc/zookeeper/conf',
        'org.apache.zookeeper.server.quorum.QuorumPeerMain',
        cfg,
      ],
      ready: async () => {
        await waitForPort(host, port, 30_000, options.netns);
        await waitFor(
          'ZooKeeper to answer imok',
          async () => {
            const r = await run('bash', ['-c', `exec 3<>/dev/tcp/${host}/${port}; printf ruok >&3; timeout 2 cat <&3`], {
              allowFailure: true,
              ...(options.netns ? { netns: options.netns } : {}),
            });
            return r.stdout.includes('imok');
          },
          30_000,
          200,
        );
      },
    }),
    'zk',
  );
}

/**
 * Starts a real server of `backend` before the file's first test and removes it (data included)
 * after its last, also when a test fails. The returned handle stands for that server; using it
 * before the file's `before` hooks have run is a bug in the test and throws.
 */
export function useKvServer(test: TestFn, backend: ServerBackend): KvServer {
  let started: KvServer | undefined;
  test.before(async () => {
    started = await startServer(backend);
  });
  test.after.always(async () => {
    await started?.dispose();
  });
  const live = (): KvServer => {
    if (!started) throw new Error(`the ${backend} test server is used before it was started`);
    return started;
  };
  return {
    backend,
    get host() {
      return live().host;
    },
    get port() {
      return live().port;
    },
    url: (prefix) => live().url(prefix),
    stop: () => live().stop(),
    start: () => live().start(),
    kill: () => live().kill(),
    pause: () => live().pause(),
    resume: () => live().resume(),
    dispose: () => live().dispose(),
    log: () => started?.log() ?? '',
  };
}
