/**
 * The real agent — the composition root `kvnet agent` runs (packages/agent/src/agent.ts) — started in
 * this process, for tests that need its parts at hand (the Docker driver to replay plugin calls, IPAM,
 * the cluster view). Everything else is the production wiring: membership on a lease, the mirrors, the
 * reconcile loop, the reaper, the local API and the Docker plugin on their sockets.
 *
 * ```ts
 * const h1 = await startTestAgent({ storeUrl: `local://${dir}/store.db`, node: 'h1', vtep: '198.18.0.1', docker: {} });
 * await dispatchPluginCall('NetworkDriver.CreateNetwork', body, h1.docker.driver);
 * await h1.stop();
 * ```
 *
 * Without a `dataplane` the agent gets a {@link RecordingDataplane}: it keeps what it was asked to
 * apply and reports the errors a test chooses, touching no kernel (no root needed). That is a stand-in
 * for unit tests of the logic above the data plane only; tests of the datapath pass a real `Dataplane`.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { overlayMtuFor, type ApplyReport, type DataplaneError, type DesiredState, type GatewayBridgeInfo, type UnderlayInfo } from '@kvnet/dataplane';
import { Agent } from '../../packages/agent/src/agent.ts';
import type { AgentContext } from '../../packages/agent/src/context.ts';
import type { DockerFace } from '../../packages/agent/src/docker/index.ts';
import type { DockerEngine } from '../../packages/agent/src/docker/engine.ts';
import type { DataplanePort } from '../../packages/agent/src/reconciler.ts';

/** A data plane that applies nothing: it records the desired states and reports {@link errors}. */
export class RecordingDataplane implements DataplanePort {
  readonly applied: DesiredState[] = [];
  /** The errors the next applies report (a test sets it to make plumbing fail). */
  errors: (state: DesiredState) => DataplaneError[] = () => [];

  /** @param underlayMtu what {@link readUnderlay} reports (the agent reads it once at start). */
  constructor(private readonly underlayMtu = 1500) {}

  /** A stand-in underlay `eth0` with {@link underlayMtu} (IPv4). */
  async readUnderlay(): Promise<UnderlayInfo> {
    return { ifname: 'eth0', mtu: this.underlayMtu, address: '198.18.0.1', family: 4, overlayMtu: overlayMtuFor(this.underlayMtu, 4) };
  }

  async apply(state: DesiredState): Promise<ApplyReport> {
    this.applied.push(state);
    return { changes: 0, rounds: 1, errors: this.errors(state), warnings: [], durationMs: 0 };
  }

  async ensureGatewayBridge(): Promise<GatewayBridgeInfo> {
    throw new Error('RecordingDataplane has no gateway bridge (start the agent with gatewayBridge none)');
  }
}

export interface TestAgentOptions {
  readonly storeUrl: string;
  /** Node name, e.g. `h1`. */
  readonly node: string;
  /** Advertise address (VTEP). */
  readonly vtep: string;
  /** Default: a {@link RecordingDataplane}. */
  readonly dataplane?: DataplanePort;
  /** Gateway bridge name (default `none`). */
  readonly gatewayBridge?: string;
  /** Kernel object prefix (default `kvnet`; only a real data plane uses it). */
  readonly namePrefix?: string;
  /** Serve the Docker plugin: on `socketPath` (default: a socket in the agent's temp dir). */
  readonly docker?: {
    readonly socketPath?: string;
    readonly engine?: DockerEngine;
    readonly scope?: 'local' | 'global';
    readonly staleAfterMs?: number;
  };
  readonly ttlS?: number;
  /** `--vxlan-port` and `--default-mtu`. */
  readonly vxlanPort?: number;
  readonly defaultMtu?: number;
  readonly logger?: Logger;
  /**
   * The names face (default off: it starts a resolver process that puts its address on `lo` of the
   * namespace the test runs in). `{}` turns it on with a resolver of its own in the agent's temp dir.
   */
  readonly names?: { readonly address?: string; readonly upstreams?: readonly string[] };
}

export interface TestAgent {
  readonly agent: Agent;
  readonly ctx: AgentContext;
  /** The Docker face (when `docker` was given). */
  readonly docker: DockerFace;
  /** The data plane the agent was given. */
  readonly dataplane: DataplanePort;
  /** The agent's local API socket. */
  readonly socketPath: string;
  /** Stops the agent and removes its temp dir. */
  stop(): Promise<void>;
}

export async function startTestAgent(opts: TestAgentOptions): Promise<TestAgent> {
  const dir = mkdtempSync(join(tmpdir(), `kvnet-agent-${opts.node}-`));
  const dataplane = opts.dataplane ?? new RecordingDataplane();
  const socketPath = join(dir, 'api.sock');
  const agent = new Agent(
    {
      storeUrl: opts.storeUrl,
      storeOpts: [],
      advertise: opts.vtep,
      nodeName: opts.node,
      stateDir: join(dir, 'state'),
      socketPath,
      metricsAddr: 'off',
      ttlS: opts.ttlS ?? 3,
      namePrefix: opts.namePrefix ?? 'kvnet',
      gatewayBridge: opts.gatewayBridge ?? 'none',
      dockerPlugin: opts.docker ? (opts.docker.socketPath ?? join(dir, 'plugin.sock')) : 'off',
      dockerSocket: opts.docker?.engine ? opts.docker.engine.socketPath : 'off',
      ...(opts.docker?.scope ? { dockerScope: opts.docker.scope } : {}),
      ...(opts.docker?.staleAfterMs !== undefined ? { dockerStaleAfterMs: opts.docker.staleAfterMs } : {}),
      dnsAddress: opts.names ? (opts.names.address ?? '169.254.53.53') : 'off',
      ...(opts.names?.upstreams ? { dnsUpstreams: opts.names.upstreams } : {}),
      ...(opts.vxlanPort !== undefined ? { vxlanPort: opts.vxlanPort } : {}),
      ...(opts.defaultMtu !== undefined ? { defaultMtu: opts.defaultMtu } : {}),
      logger: opts.logger ?? pino({ level: 'silent' }),
    },
    { dataplane, ...(opts.docker?.engine ? { dockerEngine: opts.docker.engine } : {}) },
  );
  try {
    await agent.start();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    agent,
    ctx: agent.context!,
    get docker(): DockerFace {
      if (!agent.docker) throw new Error(`agent ${opts.node} was started without the Docker plugin`);
      return agent.docker;
    },
    dataplane,
    socketPath,
    async stop() {
      // An agent's stop leaves its resolver answering (restarts); a test's agent takes it along.
      await agent.names?.uninstall().catch(() => undefined);
      await agent.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
