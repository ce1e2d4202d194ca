/**
 * @packageDocumentation
 * The names face of the agent (kvnet's DNS responder). The contract is names.ts; README.md has the
 * design. One entry, {@link startNames}, returns what it started and how to stop it.
 */

export * from './names.ts';
export { buildNameTable, listenersFor, localSandboxes, routeHolder } from './name-table.ts';
export { startNames, defaultResolverCommand } from './names-client.ts';
export { ensureSandboxRoute, joinStaticRoutes } from './resolver-address.ts';
export { InvalidNameTableError, ListenerError, ResolverUnavailableError } from './errors.ts';
