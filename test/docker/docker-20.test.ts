/**
 * Docker 20.10 (Debian's docker.io) in the plugin's default scope `local`, where it behaves like every
 * later Docker: `docker network rm` / `prune` of a network another host still uses (issue 13 item 4).
 * The other Docker scenarios run on 28.5.2 (docker-scenarios.test.ts) and 29.8.1 (docker-29.test.ts);
 * 20.10's own feature, scope `global` on a cluster store, is docker-global.test.ts.
 *
 * Needs root, Debian's dockerd, busybox-static and an agent that has `--docker-plugin`; the tests fail
 * with the reason otherwise.
 */

import { registerDockerScenarios } from './scenarios.ts';

registerDockerScenarios({ label: 'docker-20', engine: '20.10', scenarios: ['rm-refused'] });
