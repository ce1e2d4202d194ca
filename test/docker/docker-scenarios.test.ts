/**
 * Issue 6's Docker scenarios with real `kvnet agent --docker-plugin` processes and real dockerds (Docker
 * 28.5.2, the default engine) on two simulated hosts sharing one embedded store (bodies in scenarios.ts;
 * docker-29.test.ts runs the first four on Docker 29.8.1):
 *
 * - network options: `--subnet --ip-range --aux-address` honoured on both hosts, mirrored into h2's
 *   dockerd, `--ip` given once cluster-wide; `--internal` gives containers no default route but still
 *   one network across the hosts;
 * - 20 concurrent `docker run` (10 per host): 20 distinct addresses, all reachable across the hosts;
 * - `docker rm -f` on h2: endpoint record, address and h1's kernel peer entries all go;
 * - dockerd killed with its containers (`power-off`) or alone (`crash`), neither sending the plugin
 *   anything: the restarted dockerd's own sandbox clean-up (Leave + DeleteEndpoint) leaves the same
 *   clean state; and a power-off while dockerd cannot reach the plugin on its way back, so it drops the
 *   endpoint without telling kvnet: the agent's stale-endpoint sync (DockerNetworkSync) cleans up.
 *
 * Needs root, dockerd 28.5.2 (scripts/install-docker.sh) and busybox-static, and an agent that has
 * `--docker-plugin`; the tests fail with the reason otherwise.
 */

import { registerDockerScenarios } from './scenarios.ts';

registerDockerScenarios({ label: 'docker-scenarios', scenarios: ['options', 'internal', 'concurrent', 'rm', 'rm-refused', 'power-off', 'crash', 'hidden-plugin'] });
