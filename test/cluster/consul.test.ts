/** Issue 5's multi-host scenarios on the consul store backend (see scenarios.ts). */
import { registerClusterScenarios } from './scenarios.ts';

registerClusterScenarios('consul');
