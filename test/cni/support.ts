/**
 * What the CNI tests and the `cni` benchmark share: the plugin built and installed the way a deployment
 * does it (scripts/build.mjs, then scripts/install-cni.sh into a per-run plugin directory), network
 * configuration lists, cnitool (built by scripts/install-cnitool.sh), the plugin run directly as a
 * runtime runs it, and rootful podman with its CNI backend on a simulated host.
 *
 * Everything carries the run id: configuration names `<name><id>`, podman's root, run root and tmp dir
 * under the run's temp dir, container names `<name><id>`. libcni caches results machine-wide in
 * /var/lib/cni/results as `<configuration name>-<container id>-<ifname>`; {@link removeCniCache} removes
 * a run's entries.
 */

import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, REPO_ROOT, run, waitFor, type RunResult } from '../support/process.ts';

/** cnitool, as scripts/install-cnitool.sh caches it (`KVNET_CNITOOL_BIN` overrides). */
export const CNITOOL = process.env.KVNET_CNITOOL_BIN ?? '/var/cache/kvnet/cnitool-v1.3.1/cnitool';
/** Debian's containernetworking-plugins (portmap, firewall, bandwidth, bridge, host-local, …). */
export const STANDARD_PLUGINS = '/usr/lib/cni';
/** Where libcni (cnitool, podman) caches results. */
export const CNI_CACHE = '/var/lib/cni/results';
const BUSYBOX = '/bin/busybox';
const BUSYBOX_APPLETS = ['sh', 'ip', 'ping', 'cat', 'sleep', 'true', 'nc', 'httpd', 'ls', 'echo', 'hostname', 'mkdir'];
const COMMAND_TIMEOUT_MS = 120_000;

/** What is missing on this machine for the CNI tests (empty when everything is there). */
export function missingCniTools(opts: { podman?: boolean } = {}): string[] {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root');
  if (!existsSync(CNITOOL)) missing.push(`cnitool (${CNITOOL}: bash scripts/install-cnitool.sh)`);
  for (const p of ['portmap', 'firewall', 'bandwidth', 'bridge', 'host-local']) if (!existsSync(join(STANDARD_PLUGINS, p))) missing.push(`${STANDARD_PLUGINS}/${p} (apt-get install containernetworking-plugins)`);
  if (opts.podman && !existsSync('/usr/bin/podman')) missing.push('podman (apt-get install podman)');
  if (!existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (apt-get install busybox-static)`);
  return missing;
}

/**
 * Builds the bundles into `dir` with scripts/build.mjs (as `npm run build` does) and installs the plugin
 * into `dir/bin` with scripts/install-cni.sh; returns the plugin directory and the plugin's path.
 */
export async function installPlugin(dir: string): Promise<{ binDir: string; plugin: string }> {
  const dist = join(dir, 'dist');
  const binDir = join(dir, 'bin');
  await run(process.execPath, [join(REPO_ROOT, 'scripts/build.mjs'), join(dist, 'kvnet.mjs')], { cwd: REPO_ROOT, timeoutMs: COMMAND_TIMEOUT_MS });
  await run('bash', [join(REPO_ROOT, 'scripts/install-cni.sh'), binDir], { env: { ...process.env, KVNET_CNI_BUNDLE: join(dist, 'kvnet-cni') }, timeoutMs: COMMAND_TIMEOUT_MS });
  return { binDir, plugin: join(binDir, 'kvnet') };
}

export interface ConflistOptions {
  /** The configuration's name (unique per run). */
  readonly name: string;
  /** `cniVersion` (default 1.0.0, what podman 4.3 accepts at most). */
  readonly cniVersion?: string;
  /** The kvnet plugin's own fields: `network`, `socket`, … */
  readonly kvnet: Record<string, unknown>;
  /** Plugins chained after kvnet (portmap, firewall, bandwidth). */
  readonly chain?: readonly Record<string, unknown>[];
}

/** The configuration list as JSON. */
export function conflist(o: ConflistOptions): Record<string, unknown> {
  return { cniVersion: o.cniVersion ?? '1.0.0', name: o.name, plugins: [{ type: 'kvnet', ...o.kvnet }, ...(o.chain ?? [])] };
}

/** Writes `<dir>/<name>.conflist`; returns its path. */
export function writeConflist(dir: string, o: ConflistOptions): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${o.name}.conflist`);
  writeFileSync(path, `${JSON.stringify(conflist(o), null, 2)}\n`);
  return path;
}

/** Removes libcni's cached results of these configurations (cnitool's and podman's). */
export function removeCniCache(names: readonly string[]): void {
  let files: string[];
  try {
    files = readdirSync(CNI_CACHE);
  } catch {
    return;
  }
  for (const f of files) if (names.some((n) => f.startsWith(`${n}-`))) rmSync(join(CNI_CACHE, f), { force: true });
}

export interface CnitoolCall {
  /** CNI_IFNAME (default eth0). */
  readonly ifname?: string;
  /** CNI_ARGS. */
  readonly args?: string;
  /** CAP_ARGS: capability arguments (runtimeConfig), e.g. `{portMappings: […]}`. */
  readonly capArgs?: Record<string, unknown>;
}

/** cnitool against the configurations in `confDir`, run in host namespace `hostNs`. */
export function cnitool(hostNs: string, binDir: string, confDir: string, verb: 'add' | 'check' | 'del' | 'status' | 'gc', name: string, netns: string, call: CnitoolCall = {}): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    CNI_PATH: `${binDir}:${STANDARD_PLUGINS}`,
    NETCONFPATH: confDir,
    CNI_IFNAME: call.ifname ?? 'eth0',
    ...(call.args ? { CNI_ARGS: call.args } : {}),
    ...(call.capArgs ? { CAP_ARGS: JSON.stringify(call.capArgs) } : {}),
  };
  return run('nsenter', [`--net=/run/netns/${hostNs}`, CNITOOL, verb, name, netns], { env, allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
}

/** cnitool's container id for a netns path (it hashes the path: sha512, first 10 bytes). */
export async function cnitoolContainerId(netns: string): Promise<string> {
  const { createHash } = await import('node:crypto');
  return `cnitool-${createHash('sha512').update(netns).digest().subarray(0, 10).toString('hex')}`;
}

/** The plugin run once, directly, as a runtime runs it (in `hostNs`, with `env` and `stdin`). */
export async function runPluginDirect(plugin: string, hostNs: string, env: Record<string, string>, stdin: string): Promise<{ code: number; stdout: string; stderr: string; json: unknown }> {
  const r = await run('nsenter', [`--net=/run/netns/${hostNs}`, plugin], { env: { PATH: '/usr/bin:/bin', ...env }, input: stdin, allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
  let json: unknown;
  try {
    json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { ...r, json };
}

/** A CNI error JSON's fields (undefined when `json` is not one). */
export function cniError(json: unknown): { code: number; msg: string; details?: string } | undefined {
  const e = json as { code?: unknown; msg?: unknown; details?: unknown } | undefined;
  return e && typeof e.code === 'number' && typeof e.msg === 'string' ? { code: e.code, msg: e.msg, ...(typeof e.details === 'string' ? { details: e.details } : {}) } : undefined;
}

// ---------------------------------------------------------------------------------------- podman

/** Rootful podman with its CNI backend on one simulated host. */
export interface PodmanHost {
  /** The host's network namespace (a name under /run/netns). */
  readonly hostNs: string;
  /** `network_config_dir`: where its configuration lists go. */
  readonly confDir: string;
  /** The busybox image. */
  readonly image: string;
  /** Runs `podman ARGS…` on the host; resolves whatever the exit code. */
  podman(...args: string[]): Promise<RunResult>;
  /** Like {@link podman}, rejecting on a non-zero exit; returns stdout trimmed. */
  podmanOk(...args: string[]): Promise<string>;
  /** The netns path of a running container (`/run/netns/netns-<uuid>`). */
  netnsOf(container: string): Promise<string>;
  /** Removes every container (`rm -af -t 0`) and then the host's podman state. */
  stop(): Promise<void>;
}

/**
 * Sets up podman for `hostNs`: a containers.conf selecting the
 * CNI backend with `pluginDirs` and a per-host configuration directory, its own root, run root and tmp
 * dir (vfs storage: overlay on this machine's overlay root fails), cgroupfs, file events and file locks
 * (the default shm lock segment would be shared by every podman on the machine), and the ulimits this
 * machine allows. Every call is `nsenter --net=/run/netns/<host> podman …` with only CONTAINERS_CONF
 * set besides PATH, as podman's own cleanup process runs.
 */
export async function startPodmanHost(opts: { hostNs: string; runId: string; pluginDirs: readonly string[] }): Promise<PodmanHost> {
  const dir = makeTempDir(`podman-${opts.runId}-${opts.hostNs}`);
  const paths = { root: join(dir, 'root'), runroot: join(dir, 'runroot'), tmp: join(dir, 'tmp'), conf: join(dir, 'containers.conf'), netconf: join(dir, 'net.d'), rootfs: join(dir, 'rootfs') };
  for (const p of [paths.root, paths.runroot, paths.tmp, paths.netconf, join(paths.rootfs, 'bin')]) mkdirSync(p, { recursive: true });
  const list = (xs: readonly string[]): string => `[${xs.map((x) => JSON.stringify(x)).join(', ')}]`;
  writeFileSync(
    paths.conf,
    [
      '[containers]',
      'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      'runtime = "runc"',
      'lock_type = "file"',
      '[network]',
      'network_backend = "cni"',
      `cni_plugin_dirs = ${list([...opts.pluginDirs, STANDARD_PLUGINS])}`,
      `network_config_dir = ${JSON.stringify(paths.netconf)}`,
      '',
    ].join('\n'),
  );
  const global = ['--root', paths.root, '--runroot', paths.runroot, '--tmpdir', paths.tmp, '--storage-driver', 'vfs', '--cgroup-manager', 'cgroupfs'];
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: paths.conf };
  const podman = (...args: string[]): Promise<RunResult> =>
    run('nsenter', [`--net=/run/netns/${opts.hostNs}`, 'podman', ...global, ...args], { env, allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
  const podmanOk = async (...args: string[]): Promise<string> => {
    const r = await podman(...args);
    if (r.code !== 0) throw new Error(`podman ${args.join(' ')} on ${opts.hostNs} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout.trim();
  };
  const image = `localhost/kvnetbb:${opts.runId}`;
  copyFileSync(BUSYBOX, join(paths.rootfs, 'bin', 'busybox'));
  for (const a of BUSYBOX_APPLETS) symlinkSync('busybox', join(paths.rootfs, 'bin', a));
  const imported = await run('bash', ['-c', `tar -C ${paths.rootfs} -c . | nsenter --net=/run/netns/${opts.hostNs} podman ${global.join(' ')} import - ${image}`], { env, allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
  if (imported.code !== 0) throw new Error(`podman import on ${opts.hostNs} failed: ${imported.stderr}`);
  let stopped = false;
  return {
    hostNs: opts.hostNs,
    confDir: paths.netconf,
    image,
    podman,
    podmanOk,
    async netnsOf(container) {
      return waitFor(`the netns of ${container}`, async () => {
        const out = await podmanOk('inspect', '--format', '{{.NetworkSettings.SandboxKey}}', container);
        return out.startsWith('/') ? out : undefined;
      }, 10_000);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await podman('rm', '-af', '-t', '0');
      // conmon and container processes of this root that survived (a failed rm) are ours: their command lines name the root.
      for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        try {
          if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone
        }
      }
      await run('bash', ['-c', `grep -o ' ${dir}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l`], { allowFailure: true });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
