/** Names across hosts through Docker 29.8.1 (runc 1.5.3), scope local (issue 14): see names-scenarios.ts. */
import { registerDockerNamesScenarios } from './names-scenarios.ts';

registerDockerNamesScenarios({ label: 'names-docker-29', engine: '29.8.1' });
