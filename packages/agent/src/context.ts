/**
 * What the composition root (agent.ts) hands to the agent's services and faces. A face — the local
 * API, Docker, names, CNI — is a folder whose one entry takes an {@link AgentContext} and returns a
 * {@link Face}: what it started and how to stop it.
 */

import type { Logger } from 'pino';
import type { Ipam } from '@kvnet/ipam';
import type { KVStore } from '@kvnet/store';
import type { ClusterMirror } from './cluster-mirror.ts';
import type { ClusterView } from './cluster-view.ts';
import type { AgentConfig } from './config.ts';
import type { AgentMetrics } from './metrics.ts';
import type { DatapathSettings } from './network-mtu.ts';
import type { NetworkService } from './network-service.ts';
import type { ReconcileInfo, Reconciler } from './reconciler.ts';
import type { Records } from './records.ts';

/** This node as the cluster knows it. */
export interface NodeIdentity {
  /** `--node-name`. */
  readonly name: string;
  /** Persistent node id (state dir). */
  readonly id: string;
  /** Underlay address (VTEP), recorded in this node's endpoints. */
  readonly vtep: string;
}

/** The agent's own answers about itself (`GET /v1/status`, `/readyz`). */
export interface StatusSource {
  status(): Record<string, unknown>;
  nodes(): Array<Record<string, unknown>>;
  /** undefined when ready, else the reason. */
  notReadyReason(): string | undefined;
}

/** Everything below the faces: store, IPAM, record rules, the cluster view, the reconcile loop. */
export interface CoreContext {
  readonly config: AgentConfig;
  readonly logger: Logger;
  readonly metrics: AgentMetrics;
  readonly store: KVStore;
  /** The agent's one IPAM (its allocator batches and caches). */
  readonly ipam: Ipam;
  readonly records: Records;
  readonly node: NodeIdentity;
  readonly cluster: Pick<ClusterMirror, 'view' | 'waitForView' | 'waitUntil' | 'storeHealthy' | 'health' | 'follow' | 'isFollowed' | 'unfollowedNetworks'>;
  readonly reconciler: Pick<Reconciler, 'reconcileNow' | 'schedule' | 'scheduleRetry' | 'egressOf'>;
  /** This host's data path as settled at start: the cluster's VXLAN port, the underlay, the default network MTU. */
  readonly datapath: DatapathSettings;
}

export interface AgentContext extends CoreContext {
  /** Networks and endpoints: the one write path every face uses. */
  readonly networks: NetworkService;
  readonly status: StatusSource;
}

/** A started face of the agent. */
export interface Face {
  /**
   * Work to do after each reconcile, with the view it used (e.g. mirroring networks into dockerd);
   * `info.peersOnly` when only remote endpoints of programmed networks can have changed since the last.
   */
  afterReconcile?(view: ClusterView, info?: ReconcileInfo): void;
  /** Stops listeners and background work; never throws. */
  stop(): Promise<void>;
}
