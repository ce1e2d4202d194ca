/**
 * Issues 7 and 13, the compose harness (docker-compose.yml, deploy/compose/) and its demo
 * (scripts/compose-demo.sh), end to end and offline: the images built from a clean state the way CI
 * does (`scripts/compose-demo.sh --offline --build-only`, which runs deploy/compose/prepare-images.sh:
 * debootstrapped base images, the agent image from deploy/Dockerfile, a Consul stand-in from the
 * source-built binary, a Docker 28.5.2 stand-in from the source-built engine; then `docker compose
 * build` for the node, etcd and ZooKeeper images), then the demo script itself with `docker compose`
 * (Compose v5, scripts/install-docker.sh) for every KV backend, and once more with `docker-compose`
 * 1.29 (Debian's) on Consul: three Docker-in-Docker nodes each running dockerd 28.5.2 and the kvnet
 * agent, a network created on node1, listed on node2 and node3, one busybox container per node, pings
 * node1→node2, node2→node3, node3→node1 across the overlay by address and by name (the nodes' daemon.json
 * points dockerd's `dns` at kvnet's resolver), and the harness torn down.
 *
 * Two per-run daemons (Docker 28.5.2, driven by its own CLI), never the machine's own /var/run/docker.sock:
 * - a "builder" dockerd in the root network namespace (so `docker build --network host` reaches Debian's
 *   mirror and the npm registry) and a private mount namespace, with no bridge and no iptables rules;
 * - a "harness" dockerd on a simulated host (its own network namespace, test/support/dockerd.ts), where
 *   compose's bridge network, its iptables rules and the nodes live. The images go from the builder to
 *   it by `docker save | docker load`, so the demo script finds them all and builds nothing there.
 * Images carry the run id (`kvnet-<id>/…`), projects are `kvnet<id><backend>` (`kvnet<id>v1` for the
 * docker-compose 1.29 run); teardown runs `docker compose down -v` for every project and stops both
 * daemons (their data roots go with them), also on failure. Only the debootstrapped rootfs is cached
 * (/var/cache/kvnet/bookworm-minbase.tar).
 *
 * Needs root, Docker 28.5.2 and Compose v5 (scripts/install-docker.sh), docker-compose, busybox-static,
 * the Consul binary (or Go to build it) and the network to Debian's mirror and the npm registry; it
 * fails with the reason otherwise.
 */

import test from 'ava';
import { join } from 'node:path';
import { heartbeat, ok, startBuildDaemon, type BuildDaemon } from '../support/build-daemon.ts';
import { canRunDockerd, startDockerd, type Dockerd } from '../support/dockerd.ts';
import { dockerEngine, enginePath } from '../support/docker-engines.ts';
import { makeTempDir, removeTempDir, run, runId, REPO_ROOT, type RunResult } from '../support/process.ts';
import { createSimNetwork, type SimNetwork } from '../support/sim-hosts.ts';

const BACKENDS = ['consul', 'etcd', 'zookeeper'] as const;
type Backend = (typeof BACKENDS)[number];
/** The compose tools the demo runs with: `docker compose` (v2+) for every backend, `docker-compose` 1.29 once. */
type ComposeTool = 'docker compose' | 'docker-compose';
/** One demo run: up (the nodes start a dockerd each), three agents, six docker commands per node, down. */
const DEMO_TIMEOUT_MS = 900_000;
/** Building every image from a clean state: base images, npm ci in the agent image, three apt installs. */
const BUILD_TIMEOUT_MS = 2_400_000;
/** The before hook: the builds, a harness dockerd, ~2 GB of images moved to it. */
const SETUP_TIMEOUT_MS = BUILD_TIMEOUT_MS + 1_200_000;

/** The engine of both daemons and of the nodes; its CLI (first in the scripts' PATH) is the `docker` they run. */
const ENGINE = dockerEngine('28.5.2');
const SCRIPT_PATH = enginePath(ENGINE);
const usable = await canRunDockerd(ENGINE.name);
const composeV2 = await run(ENGINE.cli, ['compose', 'version'], { allowFailure: true }).catch(() => ({ code: 1, stdout: '', stderr: 'no docker CLI' }));
const hasComposeV1 = (await run('sh', ['-c', 'command -v docker-compose'], { allowFailure: true })).code === 0;
const rt = test.serial;

const id = runId();
const PREFIX = `kvnet-${id}`;
/** The images, by the variables docker-compose.yml and the scripts read. */
const IMAGES = {
  KVNET_IMAGE_PREFIX: PREFIX,
  KVNET_AGENT_IMAGE: `${PREFIX}/agent:test`,
  KVNET_NODE_IMAGE: `${PREFIX}/compose-node:test`,
  KVNET_CONSUL_IMAGE: `${PREFIX}/consul:1.22.5`,
  KVNET_ETCD_IMAGE: `${PREFIX}/compose-etcd:test`,
  KVNET_ZOOKEEPER_IMAGE: `${PREFIX}/compose-zookeeper:test`,
  KVNET_DOCKER_IMAGE: `${PREFIX}/docker:28.5.2-dind`,
};
const project = (b: Backend, tool: ComposeTool = 'docker compose'): string => `kvnet${id}${tool === 'docker compose' ? b : 'v1'}`;
/** The demo runs: every backend with `docker compose`, Consul again with `docker-compose` 1.29. */
const RUNS: ReadonlyArray<{ backend: Backend; tool: ComposeTool }> = [
  ...BACKENDS.map((backend) => ({ backend, tool: 'docker compose' as const })),
  { backend: 'consul', tool: 'docker-compose' },
];

let dir = '';
let builder: BuildDaemon | undefined;
let sim: SimNetwork | undefined;
let harness: Dockerd | undefined;

/** The environment of scripts run against the daemon at `socket`: this run's image names, the 28.5.2 CLI first in PATH. */
function scriptEnv(socket: string, projectName: string, tool: ComposeTool): NodeJS.ProcessEnv {
  return { ...process.env, ...IMAGES, PATH: SCRIPT_PATH, DOCKER_HOST: `unix://${socket}`, COMPOSE_PROJECT_NAME: projectName, KVNET_COMPOSE: tool };
}

/** scripts/compose-demo.sh against the daemon at `socket` with `tool`, this run's image names and `project`. */
function demo(socket: string, projectName: string, args: string[], timeoutMs: number, tool: ComposeTool = 'docker compose'): Promise<RunResult> {
  return run('bash', [join(REPO_ROOT, 'scripts/compose-demo.sh'), ...args], { allowFailure: true, timeoutMs, env: scriptEnv(socket, projectName, tool) });
}


test.before('build every harness image offline from a clean state; a harness dockerd on a simulated host, the images loaded', async (t) => {
  t.timeout(SETUP_TIMEOUT_MS);
  if (!usable) throw new Error('cannot run the compose harness test: this needs root, Docker 28.5.2, containerd, runc and busybox-static (scripts/setup.sh installs them)');
  if (composeV2.code !== 0) throw new Error(`cannot run the compose harness test: \`docker compose\` does not work (${composeV2.stderr.trim()}); scripts/install-docker.sh installs Compose v5 as the CLI plugin`);
  if (!hasComposeV1) throw new Error('cannot run the compose harness test: docker-compose is not installed (Debian package docker-compose)');
  dir = makeTempDir(`compose-${id}`);
  builder = await startBuildDaemon(dir, `compose-builder-${id}`);

  // exactly what CI's build step is: the demo script's offline build, for the backends' images too
  let started = Date.now();
  for (const backend of ['zookeeper', 'etcd'] as const) {
    const out = await heartbeat('compose', `build (${backend})`, ok(demo(builder.socket, `kvnet${id}build`, ['--offline', '--build-only', backend], BUILD_TIMEOUT_MS), `compose-demo.sh --offline --build-only ${backend}`));
    t.regex(out, /^PASS: /m);
  }
  t.log(`images built from a clean state (base images, agent, Consul stand-in, node, etcd, ZooKeeper): ${Math.round((Date.now() - started) / 1000)} s`);

  started = Date.now();
  sim = await createSimNetwork({ hosts: 1, prefix: id });
  harness = await startDockerd({ host: sim.hosts[0]!, runId: id });
  const images = [IMAGES.KVNET_NODE_IMAGE, IMAGES.KVNET_CONSUL_IMAGE, IMAGES.KVNET_ETCD_IMAGE, IMAGES.KVNET_ZOOKEEPER_IMAGE];
  await heartbeat('compose', 'docker save | docker load', ok(run('sh', ['-c', `${ENGINE.cli} -H unix://${builder.socket} save ${images.join(' ')} | ${ENGINE.cli} -H unix://${harness.socket} load -q`],
    { allowFailure: true, timeoutMs: 900_000 }), 'moving the images to the harness dockerd'));
  t.log(`images moved to the harness dockerd: ${Math.round((Date.now() - started) / 1000)} s`);
  // the builder is not needed any more; its data root (all the build layers) goes with the temp dir
  await builder.stop();
});

test.after.always(async (t) => {
  t.timeout(600_000);
  if (harness) {
    for (const r of RUNS) {
      await run(ENGINE.cli, ['compose', '--project-directory', REPO_ROOT, '-f', join(REPO_ROOT, 'docker-compose.yml'), 'down', '-v', '--remove-orphans', '--timeout', '10'], {
        // every profile active: `down` leaves the containers of inactive ones
        allowFailure: true, timeoutMs: 180_000, env: { ...scriptEnv(harness.socket, project(r.backend, r.tool), 'docker compose'), COMPOSE_PROFILES: 'etcd,zookeeper' },
      });
    }
    await harness.stop().catch((err) => console.error('harness dockerd teardown:', err));
  }
  if (builder) await builder.stop();
  await sim?.destroy().catch(() => undefined);
  if (dir) removeTempDir(dir);
});

for (const { backend, tool } of RUNS) {
  rt(`scripts/compose-demo.sh ${backend} with \`${tool}\`: three nodes with dockerd 28.5.2, network on node1 listed on node2 and node3, cross-node pings, torn down`, async (t) => {
    t.timeout(DEMO_TIMEOUT_MS + 60_000);
    const d = harness!;
    const started = Date.now();
    const name = project(backend, tool);
    const r = await heartbeat('compose', `demo (${backend}, ${tool})`, demo(d.socket, name, [backend], DEMO_TIMEOUT_MS, tool));
    const out = r.stdout + r.stderr;
    t.log(`compose-demo.sh ${backend} (${tool}): ${Math.round((Date.now() - started) / 1000)} s; its steps:\n${out.split('\n').filter((l) => /^(== |compose: |PASS|FAIL|c-node\d is |node\d runs |PING |3 packets|timed out)/.test(l)).join('\n')}`);
    t.is(r.code, 0, out.slice(-6000));
    t.regex(out, new RegExp(`^PASS: compose demo \\(${backend}, project ${name}\\)`, 'm'));
    // which compose ran it: Compose v5 as the docker CLI plugin, or the Python 1.29
    t.regex(out, tool === 'docker compose' ? /^compose: docker compose \(Docker Compose version v5\./m : /^compose: docker-compose \(docker-compose version 1\.29\./m);
    for (const n of ['node1', 'node2', 'node3']) t.regex(out, new RegExp(`^${n} runs Docker 28\\.5\\.2$`, 'm'), `${n}'s dockerd is 28.5.2`);
    t.regex(out, /^all images present/m, 'nothing is built on the harness daemon');
    // what each step showed: the network on node2 and node3, three cross-node pings answered
    t.is((out.match(/^[0-9a-f]{12}\s+demo\s+kvnet\s+local$/gm) ?? []).length, 2, 'demo listed by `docker network ls` on node2 and node3');
    for (const [from, to] of [['node1', 'node2'], ['node2', 'node3'], ['node3', 'node1']]) {
      t.regex(out, new RegExp(`c-${from} \\(on ${from}\\) pings c-${to} \\(on ${to}\\) at (10\\.220\\.0\\.\\d+)\\n(?:.*\\n)*?3 packets transmitted, 3 packets received`), `${from} → ${to}`);
      // and by name, through kvnet's resolver (issue 14): the name resolved to the other node's container
      t.regex(out, new RegExp(`c-${from} \\(on ${from}\\) pings c-${to} \\(on ${to}\\) by name\\n(?:.*\\n)*?PING c-${to} \\(10\\.220\\.0\\.\\d+\\)(?:.*\\n)*?3 packets transmitted, 3 packets received`), `${from} → ${to} by name`);
    }
    // the three containers got three different addresses from the one network
    const addrs = [...out.matchAll(/^c-node\d is (\S+)$/gm)].map((m) => m[1]);
    t.is(new Set(addrs).size, 3, addrs.join(' '));

    // torn down: no container, network or volume of the project is left on the harness daemon
    const label = `label=com.docker.compose.project=${name}`;
    t.is(await d.dockerOk('ps', '-aq', '--filter', label), '', 'no container left');
    t.is(await d.dockerOk('network', 'ls', '-q', '--filter', label), '', 'no network left');
    t.is(await d.dockerOk('volume', 'ls', '-q', '--filter', 'dangling=true'), '', 'no volume left (the nodes\' /var/lib/docker)');
  });
}
