/** Names across hosts through Docker 28.5.2, scope local (issue 14): see names-scenarios.ts. */
import { registerDockerNamesScenarios } from './names-scenarios.ts';

registerDockerNamesScenarios({ label: 'names-docker', engine: '28.5.2' });
