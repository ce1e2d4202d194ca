/**
 * @packageDocumentation
 * kvnet's Linux data plane: desired state as data → the exact kernel changes → iproute2 batches.
 *
 * ```ts
 * const dp = new Dataplane({ namePrefix: 'kvnet', vtep: '198.18.0.1' });
 * const gw = await dp.ensureGatewayBridge();            // { name, subnet: '172.18.0.0/16', gateway: '172.18.0.1' }
 * const report = await dp.apply({ networks: [{ id, vni: 4097, subnets, internal: false, endpoints, peers }] });
 * for (const err of report.errors) log.warn({ code: err.code }, err.message);
 * ```
 */

export {
  APPLY_MAX_ROUNDS,
  Dataplane,
  type ActualFdbEntry,
  type ActualGatewayBridge,
  type ActualHost,
  type ActualLink,
  type ActualNeighbour,
  type ActualNetwork,
  type ActualState,
  type ApplyOptions,
  type ApplyReport,
  type DataplaneConfig,
  type DesiredEndpoint,
  type DesiredNetwork,
  type DesiredPeer,
  type DesiredSandbox,
  type DesiredState,
  type GatewayBridgeConfig,
  type GatewayBridgeInfo,
  type NetnsTarget,
  type PeerApplyReport,
  type PeerDelta,
  type Plan,
  type PlanBatch,
  type PlanOp,
  type PlanStage,
  type PlanStageName,
  type SandboxProbe,
} from './dataplane.ts';
export {
  DEFAULT_GATEWAY_BRIDGE_NAME,
  DEFAULT_GATEWAY_POOL,
  DEFAULT_GATEWAY_POOL6,
  DEFAULT_UNDERLAY_MTU,
  DEFAULT_VXLAN_PORT,
} from './config.ts';
export {
  MAX_MTU,
  MIN_MTU_IPV4,
  MIN_MTU_IPV6,
  VXLAN_OVERHEAD_BYTES,
  VXLAN_OVERHEAD_IPV6_BYTES,
  checkNetworkMtu,
  minimumMtu,
  overlayMtuFor,
  vxlanOverhead,
  type MtuProblem,
  type NetworkMtuContext,
} from './mtu.ts';
export { readUnderlay, type UnderlayInfo } from './underlay.ts';
export { NSFS_MAGIC, isNetns, probeNetns, probeNetnsAsync } from './netns-file.ts';
export { VNI_MAX, VNI_MIN } from './desired-state.ts';
export {
  CommandFailedError,
  DataplaneError,
  DesiredConflictError,
  GatewayPoolExhaustedError,
  InvalidConfigError,
  InvalidDesiredStateError,
  KernelRefusedError,
  MtuExceedsUnderlayError,
  SandboxNotFoundError,
  TeardownIncompleteError,
  isDataplaneError,
  type DataplaneObject,
  type ErrorKind,
} from './errors.ts';
export { NEIGH_GC_THRESHOLDS } from './host-tuning.ts';
/** Re-exported for callers that still import it from here; address math lives in `@kvnet/netaddr`. */
export { macFromIpv4 } from '@kvnet/netaddr';
export {
  BRIDGE_IFNAME,
  IFNAME_MAX_BYTES,
  VXLAN_IFNAME,
  egressHostIfname,
  iptablesChains,
  overlayNetnsName,
  overlayVethName,
} from './names.ts';
