/**
 * A real-kernel stage for the names face, without an agent: one simulated host, three "overlay
 * namespaces" built the way the data plane builds them (br0 holding the subnet gateway, a veth per
 * container), containers with their kvnet interfaces and the route to the resolver address, an
 * upstream DNS server on the underlay, and a container on no kvnet network that reaches the host
 * namespace by its default route. A long-lived DNS probe runs in each container.
 *
 * | namespace | what |
 * |---|---|
 * | `<p>h1` | the host: the resolver process runs here (eth0 198.18.0.1 on the underlay) |
 * | `<p>up` | the upstream DNS server, 198.18.0.53 on the underlay |
 * | `<p>ova`, `<p>ovb`, `<p>ovi` | overlay namespaces of networks multi (10.61.0.0/24), other (10.62.0.0/24), secret (internal, 10.63.0.0/24) |
 * | `<p>ca1`, `<p>ca2` | containers on multi (.2, .3; ca2 has alias `web`) |
 * | `<p>cab` | a container on multi (.4, eth0) and other (.4, eth1) |
 * | `<p>cb1` | on other (.2) |
 * | `<p>ci1`, `<p>ci2` | on secret (.2, .3) |
 * | `<p>cx` | on no kvnet network: 172.30.0.2, default route via the host (172.30.0.1) |
 *
 * The cluster view adds endpoints on a remote node h2 (multi: `r1` 10.61.0.10 with alias `web`;
 * other: `rb` 10.62.0.10; secret: `ri` 10.63.0.10): their names must resolve although nothing here
 * holds their addresses. Everything is removed by `destroy()`, also after a failure (the namespaces
 * carry the run's prefix; the resolver process is killed by pid if still alive).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { ClusterView } from '../../packages/agent/src/cluster-view.ts';
import type { EndpointRecord, NetworkRecord } from '../../packages/agent/src/layout.ts';
import { ensureSandboxRoute } from '../../packages/agent/src/names/resolver-address.ts';
import { DEFAULT_RESOLVER_ADDRESS, type NamespaceListener } from '../../packages/agent/src/names/names.ts';
import { makeTempDir, REPO_ROOT, run, startProcess, waitFor, type ManagedProcess } from './process.ts';
import { attachNamespace, createSimNetwork, type SimNetwork } from './sim-hosts.ts';

export const UPSTREAM_ADDRESS = '198.18.0.53';
export const RESOLVER = DEFAULT_RESOLVER_ADDRESS;
const NETNS_DIR = '/run/netns';
const PROBE = join(REPO_ROOT, 'test/support/dns-probe.ts');
const UPSTREAM_SERVER = join(REPO_ROOT, 'test/support/dns-upstream-server.ts');
const RESOLVER_MAIN = join(REPO_ROOT, 'packages/agent/src/names/resolver-main.ts');

export const NET = {
  multi: { id: 'a'.repeat(64), name: 'multi', subnet: '10.61.0', internal: false, ns: 'ova' },
  other: { id: 'b'.repeat(64), name: 'other', subnet: '10.62.0', internal: false, ns: 'ovb' },
  secret: { id: 'c'.repeat(64), name: 'secret', subnet: '10.63.0', internal: true, ns: 'ovi' },
} as const;
type NetKey = keyof typeof NET;

/** Local containers: name → [network, last octet, aliases] per interface (eth0, eth1, …). */
const CONTAINERS: Record<string, Array<[NetKey, number, string[]]>> = {
  ca1: [['multi', 2, []]],
  ca2: [['multi', 3, ['web']]],
  cab: [['multi', 4, []], ['other', 4, []]],
  cb1: [['other', 2, []]],
  ci1: [['secret', 2, []]],
  ci2: [['secret', 3, []]],
};
const REMOTE: Array<[string, NetKey, number, string[]]> = [
  ['r1', 'multi', 10, ['web']],
  ['rb', 'other', 10, []],
  ['ri', 'secret', 10, []],
];

export interface ProbeAnswer {
  ok: boolean;
  error?: string;
  rcode?: number;
  tc?: boolean;
  aa?: boolean;
  ra?: boolean;
  answers?: Array<{ type: number; data: string; ttl: number }>;
  ms?: number;
  hex?: string;
  closed?: boolean;
  samplesMs?: number[];
  failures?: number;
  /** `wait`: when (Date.now()) the awaited answer came, and after how many queries. */
  at?: number;
  polls?: number;
}

/** A DNS client process inside one namespace. */
export class DnsProbe {
  private seq = 0;
  private buf = '';
  private readonly waiting = new Map<number, (a: ProbeAnswer) => void>();

  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (d: Buffer) => {
      this.buf += d.toString();
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        try {
          const a = JSON.parse(line) as ProbeAnswer & { id: number };
          this.waiting.get(a.id)?.(a);
          this.waiting.delete(a.id);
        } catch {
          // not ours
        }
      }
    });
  }

  request(req: Record<string, unknown>): Promise<ProbeAnswer> {
    const id = ++this.seq;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin!.write(`${JSON.stringify({ server: RESOLVER, ...req, id })}\n`);
    });
  }

  /** One query to the resolver address (UDP unless `transport: 'tcp'`). */
  query(name: string, type = 1, transport: 'udp' | 'tcp' = 'udp', extra: Record<string, unknown> = {}): Promise<ProbeAnswer> {
    return this.request({ op: 'query', name, type, transport, ...extra });
  }
}

export interface NamesFixture {
  readonly prefix: string;
  readonly sim: SimNetwork;
  /** The host namespace's name and path. */
  readonly host: { readonly name: string; readonly path: string };
  /** The overlay listeners the resolver should have. */
  readonly listeners: NamespaceListener[];
  /** The cluster as the agent would see it (local node `h1`). */
  view(options?: { without?: string[]; extra?: EndpointRecord[] }): ClusterView;
  /** Argv that starts the resolver process inside the host namespace. */
  readonly resolverCommand: string[];
  readonly socketPath: string;
  readonly upstream: ManagedProcess;
  /** The namespace name of a container (`ca1` → `<p>ca1`). */
  ns(container: string): string;
  probe(container: string): Promise<DnsProbe>;
  /** busybox nslookup from a container to the resolver address: the addresses it printed, or its error line. */
  nslookup(container: string, name: string, type?: string): Promise<{ addresses: string[]; names: string[]; output: string }>;
  /** Remembers a resolver pid to kill at destroy() if still alive. */
  track(pid: number): void;
  destroy(): Promise<void>;
}

const ip = (...args: string[]) => run('ip', args, { timeoutMs: 15_000 });

function endpoint(id: string, name: string, net: NetKey, octet: number, node: string, aliases: string[], createdAt: string, netns?: string): EndpointRecord {
  const n = NET[net];
  const addr = `${n.subnet}.${octet}`;
  return {
    id, name, network: n.id, node, nodeId: node, address: `${addr}/24`, ip: addr, mac: '02:42:00:00:00:00', createdAt,
    ...(netns ? { netns } : {}), ...(aliases.length ? { aliases } : {}),
  } as EndpointRecord;
}

export async function createNamesFixture(prefix: string): Promise<NamesFixture> {
  const sim = await createSimNetwork({ hosts: 1, prefix });
  const pids = new Set<number>();
  const killTracked = (): void => {
    for (const pid of [...pids, ...probes.map((p) => p.pid)]) {
      if (pid === undefined) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  };
  process.on('exit', killTracked);
  const probes: ChildProcess[] = [];
  let upstream: ManagedProcess | undefined;
  const destroy = async (): Promise<void> => {
    killTracked();
    process.removeListener('exit', killTracked);
    await upstream?.kill();
    await sim.destroy();
  };
  try {
    const host = sim.hosts[0]!;
    const upNs = `${prefix}up`;
    await attachNamespace(sim, upNs, 'pup', UPSTREAM_ADDRESS);
    upstream = startProcess('dns-upstream', process.execPath, ['--import', 'tsx', UPSTREAM_SERVER, UPSTREAM_ADDRESS, '53'], { netns: upNs, cwd: REPO_ROOT });
    for (const n of Object.values(NET)) {
      const ns = `${prefix}${n.ns}`;
      await ip('netns', 'add', ns);
      await ip('-n', ns, 'link', 'add', 'name', 'br0', 'type', 'bridge');
      await ip('-n', ns, 'addr', 'add', `${n.subnet}.1/24`, 'dev', 'br0');
      await ip('-n', ns, 'link', 'set', 'dev', 'br0', 'up');
    }
    let v = 0;
    for (const [c, ifaces] of Object.entries(CONTAINERS)) {
      const cont = await sim.addContainer(host, c);
      for (const [i, [net, octet]] of ifaces.entries()) {
        const ov = `${prefix}${NET[net].ns}`;
        const veth = `v${++v}`;
        await ip('link', 'add', 'name', veth, 'netns', ov, 'type', 'veth', 'peer', 'name', `eth${i}`, 'netns', cont.name);
        await ip('-n', ov, 'link', 'set', 'dev', veth, 'master', 'br0', 'up');
        await ip('-n', cont.name, 'addr', 'add', `${NET[net].subnet}.${octet}/24`, 'dev', `eth${i}`);
        await ip('-n', cont.name, 'link', 'set', 'dev', `eth${i}`, 'up');
      }
      // One kvnet interface per sandbox carries the route (the oldest endpoint's: eth0 here).
      await ensureSandboxRoute(cont.path, 'eth0', RESOLVER);
    }
    const cx = await sim.addContainer(host, 'cx');
    await ip('link', 'add', 'name', 'hx', 'netns', host.name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', cx.name);
    await ip('-n', host.name, 'addr', 'add', '172.30.0.1/24', 'dev', 'hx');
    await ip('-n', host.name, 'link', 'set', 'dev', 'hx', 'up');
    await ip('-n', cx.name, 'addr', 'add', '172.30.0.2/24', 'dev', 'eth0');
    await ip('-n', cx.name, 'link', 'set', 'dev', 'eth0', 'up');
    await ip('-n', cx.name, 'route', 'add', 'default', 'via', '172.30.0.1');
    await waitFor('the upstream DNS server', () => upstream!.log().includes('listening'), 20_000, 100);

    const socketPath = join(makeTempDir('names'), 'resolver.sock');
    const fixture: NamesFixture = {
      prefix,
      sim,
      host: { name: host.name, path: host.path },
      listeners: Object.values(NET).map((n) => ({ network: n.id, netns: `${NETNS_DIR}/${prefix}${n.ns}` })),
      view(options = {}) {
        const networks = new Map<string, NetworkRecord>(
          Object.values(NET).map((n) => [n.id, { id: n.id, name: n.name, vni: 4000, poolId: 'p', subnet: `${n.subnet}.0/24`, gateway: `${n.subnet}.1`, auxAddresses: {}, internal: n.internal, labels: {}, options: {}, createdAt: '', createdBy: 'h1' }]),
        );
        const eps: EndpointRecord[] = [];
        let t = 0;
        const at = () => `2026-01-01T00:00:${String(t++).padStart(2, '0')}Z`;
        for (const [c, ifaces] of Object.entries(CONTAINERS)) {
          for (const [net, octet, aliases] of ifaces) eps.push(endpoint(`${c}-${net}`, c, net, octet, 'h1', aliases, at(), `${NETNS_DIR}/${prefix}${c}`));
        }
        for (const [name, net, octet, aliases] of REMOTE) eps.push(endpoint(`${name}-${net}`, name, net, octet, 'h2', aliases, at()));
        eps.push(...(options.extra ?? []));
        const endpoints = new Map<string, Map<string, EndpointRecord>>();
        for (const e of eps) {
          if (options.without?.includes(e.name)) continue;
          if (!endpoints.has(e.network)) endpoints.set(e.network, new Map());
          endpoints.get(e.network)!.set(e.id, e);
        }
        return { networks, endpoints, nodes: new Map() };
      },
      resolverCommand: ['nsenter', `--net=${host.path}`, process.execPath, '--import', import.meta.resolve('tsx'), RESOLVER_MAIN],
      socketPath,
      upstream,
      ns: (c) => `${prefix}${c}`,
      async probe(container) {
        // Its own spawn: the probe reads requests on stdin, which startProcess closes.
        const child = spawn('nsenter', [`--net=${NETNS_DIR}/${prefix}${container}`, process.execPath, '--import', 'tsx', PROBE], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
        probes.push(child);
        const probe = new DnsProbe(child);
        // Ready once it answers (tsx start-up takes a moment).
        await probe.request({ op: 'raw', transport: 'udp', hex: '', server: '127.0.0.1', port: 9, timeoutMs: 1 });
        return probe;
      },
      async nslookup(container, name, type) {
        const args = ['busybox', 'nslookup', ...(type ? [`-type=${type}`] : []), name, RESOLVER];
        const r = await sim.exec(`${prefix}${container}`, ...(args as [string, ...string[]]));
        const output = r.stdout + r.stderr;
        const body = output.split(/\n\s*\n/).slice(1).join('\n');
        const addresses = [...body.matchAll(/^Address:\s+(\S+)$/gm)].map((m) => m[1]!);
        const names = [...body.matchAll(/name = (\S+)/g)].map((m) => m[1]!);
        return { addresses, names, output };
      },
      track(pid) {
        pids.add(pid);
      },
      destroy,
    };
    return fixture;
  } catch (err) {
    await destroy();
    throw err;
  }
}
