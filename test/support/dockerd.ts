/**
 * A real dockerd on a simulated host: in the host's network
 * namespace plus its own UTS and mount namespaces (`nsenter --net=/run/netns/H unshare --uts --mount`;
 * `ip netns exec` would remount /sys and break dockerd's cgroup setup), with a per-host directory
 * bind-mounted over /run/docker/plugins inside that mount namespace — so a plugin socket created in
 * `pluginDir` is seen by this dockerd only — and its own data root, exec root, API socket and pid file in
 * a per-run temp dir. A busybox image (from busybox-static, no registry) is imported as {@link Dockerd.image}.
 *
 * The engine is Docker 28.5.2 unless `engine` says otherwise (see docker-engines.ts: 28.5.2, 29.8.1 or
 * Debian's 20.10); {@link Dockerd.docker} runs the CLI that fits it.
 *
 * ```ts
 * const d = await startDockerd({ host: sim.hosts[0], runId: id });           // engine: '28.5.2'
 * await writePluginSocketIn(d.pluginDir);            // e.g. DockerPluginServer({ socketPath: join(d.pluginDir, 'kvnet.sock') })
 * await d.docker('run', '--rm', '--network', 'none', d.image, 'true');
 * await d.stop();                                    // containers removed, dockerd stopped, files removed
 * ```
 *
 * Everything is named with the run id; `stop()` is idempotent and a process exit kills what is left.
 */

import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, copyFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { makeTempDir, removeTempDir, run, startProcess, waitFor, type ManagedProcess, type RunResult } from './process.ts';
import type { SimHost } from './sim-hosts.ts';
import { dockerEngine, engineMissing, enginePath, type DockerEngine, type DockerEngineName } from './docker-engines.ts';

const DOCKER_PLUGIN_DIR = '/run/docker/plugins';
const BUSYBOX = '/bin/busybox';
const BUSYBOX_APPLETS = ['sh', 'ip', 'ping', 'cat', 'sleep', 'ifconfig', 'route', 'hostname', 'true', 'wget', 'nc', 'ls'];
const READY_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 20_000;
const COMMAND_TIMEOUT_MS = 120_000;

const liveExecRoots = new Set<string>();
let exitHookInstalled = false;

/**
 * SIGKILLs what a dockerd left running: the containers' init processes, found by the `*.pid` files
 * under its exec root and checked by their cgroup (which names the container id, the pid file's
 * directory), and its managed containerd and shims, found by the exec root (unique to the run) in
 * their command lines. A pid that now belongs to anything else is never killed.
 */
function killPidFiles(execRoot: string): void {
  const ours = (pid: number, containerId: string): boolean => {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmdline.includes(execRoot)) return true;
      return /^[0-9a-f]{64}$/.test(containerId) && readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes(containerId);
    } catch {
      return false;
    }
  };
  const walk = (dir: string, depth: number): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory() && depth < 8) walk(path, depth + 1);
      else if (e.isFile() && e.name.endsWith('.pid')) {
        let pid = NaN;
        try {
          pid = Number(readFileSync(path, 'utf8').trim());
        } catch {
          continue;
        }
        if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid || !ours(pid, basename(dir))) continue;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  };
  walk(execRoot, 0);
  // the shims write no pid file: find them (and containerd) by the exec root in their command line
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue;
    if (!ours(pid, '')) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Before process.ts's own hooks (which SIGKILL dockerd and delete the temp dirs holding the pid files).
  const sweep = (): void => {
    for (const root of liveExecRoots) killPidFiles(root);
  };
  process.prependListener('exit', sweep);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.prependOnceListener(sig, sweep);
}

/**
 * Why this machine cannot run real-dockerd tests on `engine` ("" when it can): root, the engine's
 * binaries, containerd, runc and a static busybox.
 */
export async function dockerdUnusable(engine: DockerEngineName = dockerEngine().name): Promise<string> {
  if (process.getuid?.() !== 0) return 'the Docker tests need root';
  const missing = engineMissing(dockerEngine(engine));
  if (missing) return missing;
  const r = await run('sh', ['-c', 'command -v containerd && command -v runc'], { allowFailure: true });
  if (r.code !== 0) return 'containerd and runc are needed (Debian packages containerd, runc; scripts/setup.sh)';
  if (!existsSync(BUSYBOX)) return `${BUSYBOX} is needed (Debian package busybox-static)`;
  const file = await run('sh', ['-c', `ldd ${BUSYBOX} 2>&1`], { allowFailure: true });
  return /not a dynamic executable|statically linked/.test(file.stdout) ? '' : `${BUSYBOX} is not statically linked`;
}

/**
 * True when this machine can run the real-dockerd tests on `engine` (default: the default engine);
 * when it cannot, the reason goes to stderr.
 */
export async function canRunDockerd(engine?: DockerEngineName): Promise<boolean> {
  const why = await dockerdUnusable(engine);
  if (why) console.error(`cannot run dockerd: ${why}`);
  return !why;
}

export interface Dockerd {
  readonly host: SimHost;
  /** The engine this dockerd runs (its binaries, and the CLI {@link docker} uses). */
  readonly engine: DockerEngine;
  /** Per-host directory mounted over /run/docker/plugins inside this dockerd's mount namespace. */
  readonly pluginDir: string;
  /** The Engine API socket (reachable from the test process). */
  readonly socket: string;
  /** The busybox image, `kvnetbb:<run id>`. */
  readonly image: string;
  readonly process: ManagedProcess;
  /** Runs the engine's docker CLI against this daemon; resolves with the result whatever the exit code. */
  docker(...args: string[]): Promise<RunResult>;
  /** Like {@link docker} but rejects on a non-zero exit, with stderr in the message. */
  dockerOk(...args: string[]): Promise<string>;
  /** dockerd's log so far (of the current process, since the last restart). */
  log(): string;
  /**
   * Stops dockerd and starts it again on the same data root, exec root and sockets; resolves when it
   * answers. `graceful`: SIGTERM (containers stop; those with a restart policy come back). `crash`:
   * SIGKILL dockerd only (containerd and the containers keep running, as after a dockerd crash).
   * `power-off`: SIGKILL dockerd, containerd, the shims and every container process, as a host
   * losing power would. Neither crash nor power-off sends the plugin Leave or DeleteEndpoint.
   */
  restart(how: 'graceful' | 'crash' | 'power-off'): Promise<void>;
  stop(): Promise<void>;
}

/** Starts dockerd on `host` and imports the busybox image. Rejects (after cleaning up) if it does not come up. */
export async function startDockerd(opts: {
  host: SimHost;
  runId: string;
  /** Which Docker Engine (docker-engines.ts); default 28.5.2, or `KVNET_DOCKER_ENGINE`. */
  engine?: DockerEngineName;
  /**
   * Mount a sysfs of the host's own network namespace over /sys inside dockerd's mount namespace
   * (cgroups put back on top). Without it dockerd sees the root namespace's /sys/class/net, cannot
   * find its bridges' port state files and sleeps on every bridge endpoint (docker_gwbridge too) —
   * an artefact of simulated hosts a real host does not have. For benchmarks that time bridge
   * endpoints; default false.
   */
  ownSysfs?: boolean;
  /** More dockerd flags, e.g. `--cluster-store etcd://198.19.0.1:2379 --cluster-advertise eth0:2376`. */
  extraArgs?: readonly string[];
  /**
   * Shell run inside dockerd's namespaces just before it starts, also on every restart, e.g. the host
   * preparation `mkdir -p /run/netns && mount --bind /run/netns /run/netns && mount --make-shared /run/netns`.
   */
  setup?: string;
}): Promise<Dockerd> {
  const { host, runId } = opts;
  const engine = dockerEngine(opts.engine);
  const missing = engineMissing(engine);
  if (missing) throw new Error(`cannot start dockerd on ${host.name}: ${missing}`);
  const quote = (a: string): string => `'${a.replaceAll("'", "'\\''")}'`;
  const dir = makeTempDir(`dockerd-${runId}-${host.name}`);
  const paths = {
    data: join(dir, 'data'),
    exec: join(dir, 'exec'),
    plugins: join(dir, 'plugins'),
    rootfs: join(dir, 'rootfs'),
    socket: join(dir, 'docker.sock'),
    pid: join(dir, 'docker.pid'),
    cgroup: join(dir, 'cgroup'),
  };
  for (const p of [paths.data, paths.exec, paths.plugins, join(paths.rootfs, 'bin'), DOCKER_PLUGIN_DIR]) mkdirSync(p, { recursive: true });
  const hostname = `${host.name}`;
  // cgroups are kept aside by a bind mount and moved back on top of the new sysfs
  const ownSysfs = opts.ownSysfs
    ? [`mkdir -p ${paths.cgroup}`, `mount --rbind /sys/fs/cgroup ${paths.cgroup}`, 'mount -t sysfs sysfs /sys', `mount --move ${paths.cgroup} /sys/fs/cgroup`]
    : [];
  const script = [
    `hostname ${hostname}`,
    `mount --bind ${paths.plugins} ${DOCKER_PLUGIN_DIR}`,
    ...ownSysfs,
    ...(opts.setup ? [`{ ${opts.setup}; }`] : []),
    `export PATH=${quote(enginePath(engine))}`,
    `exec ${quote(engine.dockerd)} --data-root ${paths.data} --exec-root ${paths.exec} -H unix://${paths.socket} -p ${paths.pid} --bridge none --log-level info${(opts.extraArgs ?? []).map((a) => ` ${quote(a)}`).join('')}`,
  ].join(' && ');
  let restarts = 0;
  const launch = (): ManagedProcess =>
    startProcess(`dockerd-${host.name}${restarts ? `-${restarts}` : ''}`, 'nsenter', [`--net=/run/netns/${host.name}`, 'unshare', '--uts', '--mount', 'sh', '-c', script], {
      logFile: join(dir, restarts ? `dockerd-${restarts}.log` : 'dockerd.log'),
    });
  let proc = launch();
  installExitHook();
  liveExecRoots.add(paths.exec);
  const image = `kvnetbb:${runId}`;
  const docker = (...args: string[]): Promise<RunResult> => run(engine.cli, ['-H', `unix://${paths.socket}`, ...args], { allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
  const dockerOk = async (...args: string[]): Promise<string> => {
    const r = await docker(...args);
    if (r.code !== 0) throw new Error(`docker ${args.join(' ')} on ${host.name} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout.trim();
  };
  let stopped = false;
  const d: Dockerd = {
    host,
    engine,
    pluginDir: paths.plugins,
    socket: paths.socket,
    image,
    get process() {
      return proc;
    },
    docker,
    dockerOk,
    log: () => proc.log(),
    async restart(how) {
      if (how === 'graceful') await proc.stop(STOP_GRACE_MS);
      else {
        proc.child.kill('SIGKILL');
        await new Promise<void>((resolve) => (proc.child.exitCode !== null || proc.child.signalCode !== null ? resolve() : proc.child.once('exit', () => resolve())));
        // nsenter/unshare exec'd into sh which exec'd dockerd, so the child is dockerd itself
        if (how === 'power-off') killPidFiles(paths.exec);
        // containerd dies with dockerd (parent-death signal) but may linger until reaped; a new dockerd
        // that finds its pid still in /proc waits for it instead of starting a new one, and times out
        const pidFile = join(paths.exec, 'containerd', 'containerd.pid');
        const containerdPid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : NaN;
        if (Number.isInteger(containerdPid) && containerdPid > 1) {
          await waitFor(`the old containerd (pid ${containerdPid}) of ${host.name} to be gone`, () => !existsSync(`/proc/${containerdPid}`), 30_000, 100);
        }
      }
      restarts++;
      proc = launch();
      await waitReady();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (proc.child.exitCode === null && proc.child.signalCode === null && existsSync(paths.socket)) {
        const ids = (await docker('ps', '-aq')).stdout.split('\n').filter(Boolean);
        if (ids.length) await docker('rm', '-f', ...ids);
        const nets = (await docker('network', 'ls', '-q', '--filter', 'type=custom')).stdout.split('\n').filter(Boolean);
        for (const n of nets) await docker('network', 'rm', n);
      }
      await proc.stop(STOP_GRACE_MS);
      // dockerd's managed containerd and the shims exit with it; make sure, by their pid files
      killPidFiles(paths.exec);
      liveExecRoots.delete(paths.exec);
      removeTempDir(dir);
    },
  };
  const waitReady = (): Promise<unknown> =>
    waitFor(`dockerd on ${host.name}`, async () => {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) throw new Error(`dockerd exited: ${proc.log().slice(-2000)}`);
      return existsSync(paths.socket) && (await docker('version', '--format', '{{.Server.Version}}')).code === 0;
    }, READY_TIMEOUT_MS, 200);
  try {
    await waitReady();
    copyFileSync(BUSYBOX, join(paths.rootfs, 'bin', 'busybox'));
    for (const a of BUSYBOX_APPLETS) symlinkSync('busybox', join(paths.rootfs, 'bin', a));
    const r = await run('sh', ['-c', `tar -C ${paths.rootfs} -c . | ${quote(engine.cli)} -H unix://${paths.socket} import - ${image}`], { allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS });
    if (r.code !== 0) throw new Error(`importing busybox into dockerd on ${host.name} failed: ${r.stderr}`);
    return d;
  } catch (err) {
    await d.stop().catch(() => undefined);
    throw err;
  }
}
