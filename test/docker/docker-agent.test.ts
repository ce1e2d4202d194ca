/**
 * The seeds' demo with real `kvnet agent --docker-plugin` processes and real dockerds (Docker 28.5.2, the
 * default engine) on two simulated hosts sharing one embedded store: `docker network create -d kvnet
 * --ipam-driver kvnet multi` on h1, `multi` listed on h2, containers on both hosts pinging each other,
 * `kvnet network ls` showing it, the agent restarted under a running ping and stopped (Docker's calls fail
 * with the plugin named), a `kvnet network create` network appearing in both dockerds, and `docker network
 * rm` on h1 removing it on h2 too. The body is in scenarios.ts (`demo`), shared with docker-29.test.ts.
 *
 * Needs root, dockerd 28.5.2 (scripts/install-docker.sh) and busybox-static, and an agent that has
 * `--docker-plugin`; the tests fail with the reason otherwise.
 */

import { registerDockerScenarios } from './scenarios.ts';

registerDockerScenarios({ label: 'docker-agent', scenarios: ['demo'] });
