/**
 * The Docker face: kvnet as Docker's remote network + IPAM plugin (`--docker-plugin SOCKET`), and,
 * with the local Engine API (`--docker-socket`), kvnet networks mirrored into this host's dockerd and
 * Docker endpoints named after their containers. See ../../DOCKER-PLUGIN.md.
 *
 * | file | what |
 * |---|---|
 * | protocol.ts | the plugin protocol: request schemas, answers, {@link dispatchPluginCall} (pure) |
 * | plugin-server.ts | the protocol on the plugin's unix socket |
 * | driver.ts | what each Docker call means for kvnet (NetworkDriver + IpamDriver semantics) |
 * | backend.ts | the narrow contract the driver uses, on kvnet's store, IPAM and network service |
 * | engine.ts | the minimal Engine API client (names, labels, mirroring) |
 * | network-sync.ts | kvnet networks into dockerd and back; stale and unnamed endpoints |
 */

import type { AgentContext, Face } from '../context.ts';
import { StoreDockerBackend } from './backend.ts';
import { DockerDriver, type DockerNamesHooks } from './driver.ts';
import { DockerEngine } from './engine.ts';
import { assessDockerDns, readDockerDnsFacts } from './dns-setup.ts';
import { DockerNetworkSync } from './network-sync.ts';
import { DockerPluginServer } from './plugin-server.ts';

/** Next sync while endpoints wait for dockerd to list them (to learn their container names). */
export const DOCKER_SYNC_PENDING_MS = 1_000;
/** A sync this long after a Join: the container is normally running by then, with its aliases listed. */
export const JOIN_SYNC_DELAY_MS = 250;

export { StoreDockerBackend, type DockerBackend, type DockerEndpointRecord, type DockerNetworkRecord } from './backend.ts';
export { DockerDriver, type DockerNamesHooks } from './driver.ts';
export { DockerEngine, DockerEngineError } from './engine.ts';
export { assessDockerDns, readDockerDnsFacts, type DockerDnsFacts, type DockerDnsFinding } from './dns-setup.ts';
export { DockerPluginServer } from './plugin-server.ts';
export { ADOPT_NETWORK_OPTION, KVNET_ADDRESS_SPACE, PLUGIN_NAME } from './protocol.ts';

/** The started Docker face; its parts are exposed for tests and for `kvnet doctor`. */
export interface DockerFace extends Face {
  readonly driver: DockerDriver;
  readonly backend: StoreDockerBackend;
  readonly plugin: DockerPluginServer;
  /** Undefined with `--docker-socket off`. */
  readonly sync: DockerNetworkSync | undefined;
}

export interface DockerFaceDeps {
  /** The Engine API client (default: one on `--docker-socket`); tests pass their own. */
  readonly engine?: DockerEngine;
  /** The names face's Join/Leave side (the route to the resolver address); absent with names off. */
  readonly names?: DockerNamesHooks;
}

/** Says in the log, once at start, when this host's containers will not reach kvnet's resolver (dns-setup.ts). */
async function logDnsSetup(engine: DockerEngine, address: string, logger: AgentContext['logger']): Promise<void> {
  const findings = assessDockerDns(await readDockerDnsFacts(engine), address);
  for (const f of findings) logger[f.level]({ code: f.code }, f.message);
  if (findings.length === 0) logger.info({ address }, `dockerd sends its containers' DNS queries to kvnet's resolver ${address}`);
}

/** Starts the plugin server on `config.dockerPlugin`; call only when it is not `off`. */
export async function startDocker(ctx: AgentContext, deps: DockerFaceDeps = {}): Promise<DockerFace> {
  const { config } = ctx;
  const logger = ctx.logger.child({ component: 'docker' });
  const engine = deps.engine ?? (config.dockerSocket === undefined || config.dockerSocket === 'off' ? undefined : new DockerEngine(config.dockerSocket));
  const backend = new StoreDockerBackend({ ...ctx, logger });
  const stopping = new AbortController();
  let sync: DockerNetworkSync | undefined;
  /** The next pass must run whatever the reconcile was: the first one, and after one that left work pending or failed. */
  let followUp = true;
  // dockerd removes its network whatever kvnet answers: put it back at once (scope local; in scope global
  // dockerd's own cluster store keeps it)
  const onDelete = {
    starting: (nid: string): void => sync?.holdBack(nid),
    finished: (nid: string, refusal: string | undefined): void => {
      if (!sync) return;
      if (refusal !== undefined && config.dockerScope !== 'global') {
        logger.warn({ nid, reason: refusal }, 'docker removed a network kvnet refused to remove; putting it back');
        void sync.restoreRefused(nid, refusal, () => ctx.cluster.view(), stopping.signal);
      }
      sync.release(nid);
    },
  };
  // A joined container is running moments later: a sync then learns its aliases (DNSNames are completed at start).
  const onJoined = (): void => ctx.reconciler.schedule(JOIN_SYNC_DELAY_MS);
  const driver = new DockerDriver({ backend, logger, onDelete, onJoined, ...(config.dockerScope ? { scope: config.dockerScope } : {}), ...(engine ? { engine } : {}), ...(deps.names ? { names: deps.names } : {}) });
  const plugin = new DockerPluginServer({ socketPath: config.dockerPlugin!, handlers: driver, logger });
  sync = engine
    ? new DockerNetworkSync({
        engine,
        node: ctx.node.name,
        logger,
        removeEndpoint: (dockerNetworkId, dockerEndpointId) => backend.deleteEndpoint(dockerNetworkId, dockerEndpointId),
        nameEndpoint: (nid, eid, name) => backend.nameEndpoint(nid, eid, name),
        aliasEndpoint: (nid, eid, aliases) => backend.aliasEndpoint(nid, eid, aliases),
        mirrorNetworks: config.dockerScope !== 'global',
        ...(config.dockerDriverName ? { driverName: config.dockerDriverName } : {}),
        ...(config.dockerStaleAfterMs !== undefined ? { staleAfterMs: config.dockerStaleAfterMs } : {}),
      })
    : undefined;
  await plugin.start();
  if (deps.names && engine) void logDnsSetup(engine, deps.names.address, logger);
  return {
    driver,
    backend,
    plugin,
    sync,
    afterReconcile(_view, info): void {
      if (!sync || !ctx.cluster.storeHealthy) return;
      // Remote endpoints coming and going change nothing dockerd mirrors: such a run (one per event at
      // scale) skips the pass — and its Engine API call — unless the last pass left work for later.
      if (info?.peersOnly && !followUp && sync.settled) return;
      followUp = false;
      sync
        .run(() => ctx.cluster.view())
        .then((r) => {
          if (r.errors.length > 0) {
            followUp = true;
            ctx.reconciler.scheduleRetry();
          } else if (r.pending > 0) {
            followUp = true;
            ctx.reconciler.schedule(DOCKER_SYNC_PENDING_MS); // name new endpoints once dockerd lists them
          }
        })
        .catch((err) => {
          followUp = true;
          logger.warn({ err }, 'cannot reach the local dockerd to mirror kvnet networks; will retry');
          ctx.reconciler.scheduleRetry();
        });
    },
    async stop(): Promise<void> {
      stopping.abort();
      await plugin.stop();
      await driver.stop();
    },
  };
}
