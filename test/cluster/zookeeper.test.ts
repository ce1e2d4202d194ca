/** Issue 5's multi-host scenarios on the zookeeper store backend (see scenarios.ts). */
import { registerClusterScenarios } from './scenarios.ts';

registerClusterScenarios('zookeeper');
