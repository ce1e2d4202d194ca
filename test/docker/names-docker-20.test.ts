/** Names across hosts through Docker 20.10 (Debian's docker.io), scope local (issue 14): see names-scenarios.ts. */
import { registerDockerNamesScenarios } from './names-scenarios.ts';

registerDockerNamesScenarios({ label: 'names-docker-20', engine: '20.10' });
