/**
 * Docker Engine 29.8.1 (moby/v2 v2.0.0-beta.24, built by scripts/install-docker.sh, with runc 1.5.3
 * first in its PATH; the 28.5.2 CLI talks to it): the seeds' demo and issue 6's scenarios 1–4 with real
 * `kvnet agent --docker-plugin` processes on two simulated hosts — a network made on one host visible
 * on the other (`demo`), network options and `--internal`, concurrent `docker run`, and `docker rm -f`
 * clean-up, and `docker network rm`/`prune` of a network the other host uses (`rm-refused`). The same
 * bodies as docker-agent.test.ts and docker-scenarios.test.ts (scenarios.ts), on
 * the other engine; the dockerd restart scenarios run on 28.5.2 only.
 *
 * Needs root, dockerd 29.8.1 and runc 1.5.3 (scripts/install-docker.sh), busybox-static and an agent
 * that has `--docker-plugin`; the tests fail with the reason otherwise.
 */

import { registerDockerScenarios } from './scenarios.ts';

registerDockerScenarios({ label: 'docker-29', engine: '29.8.1', scenarios: ['demo', 'options', 'internal', 'concurrent', 'rm', 'rm-refused'] });
