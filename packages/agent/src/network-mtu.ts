/**
 * One MTU per network, the same on every host: how the agent chooses it at creation, refuses a bad
 * one, and reports a network that this host's underlay cannot carry.
 *
 * A network's MTU is stored in its record (`mtu`) when it is created: `--mtu` / the local API's `mtu`,
 * or Docker's `-o com.docker.network.driver.mtu=N`, else `--default-mtu`, else the creating host's
 * underlay MTU − 50 (− 70 over an IPv6 underlay). Every host programs that value, so two hosts never
 * disagree about how large a frame may be (a bigger MTU on one side is silently dropped on the other:
 * moby/libnetwork#1021). A host whose underlay is smaller than the network needs says so — in its log
 * (once per network, at start and when the network appears), in a metric, in `/v1/status` and in
 * `network inspect` — instead of dropping large packets without a word.
 *
 * The rules themselves (minimums, overhead) are the data plane's `checkNetworkMtu`; this module only
 * decides which value applies and words the errors for the agent's users.
 */

import type { Logger } from 'pino';
import {
  checkNetworkMtu,
  DEFAULT_UNDERLAY_MTU,
  overlayMtuFor,
  type DataplaneError,
  type UnderlayInfo,
} from '@kvnet/dataplane';
import type { ClusterView } from './cluster-view.ts';
import { InvalidInputError } from './errors.ts';
import { familyOf, type NetworkRecord } from './layout.ts';
import type { AgentMetrics } from './metrics.ts';

/** Docker's driver option naming a network's MTU (`docker network create -o com.docker.network.driver.mtu=N`). */
export const MTU_OPTION = 'com.docker.network.driver.mtu';
/** The code under which a network too large for this host's underlay is reported (the data plane's). */
export const MTU_WARNING_CODE = 'KVNET_DATAPLANE_MTU_EXCEEDS_UNDERLAY';

/** What this host's data path is, fixed at start: the cluster's VXLAN port, the underlay, the default network MTU. */
export interface DatapathSettings {
  /** The cluster's VXLAN UDP port (recorded in the store by the first agent). */
  readonly vxlanPort: number;
  /**
   * The interface holding this host's VTEP address, read at start; undefined when the data plane
   * given to the agent cannot tell (a test's stand-in).
   */
  readonly underlay?: UnderlayInfo;
  /** MTU of networks this agent creates without one: `--default-mtu`, else what the underlay carries. */
  readonly defaultMtu: number;
}

/** The default MTU of networks this host creates: `--default-mtu`, else the underlay's MTU − the VXLAN overhead. */
export function defaultNetworkMtu(flag: number | undefined, underlay: UnderlayInfo | undefined): number {
  return flag ?? underlay?.overlayMtu ?? overlayMtuFor(DEFAULT_UNDERLAY_MTU, 4);
}

/**
 * Checks `--default-mtu` against this host's underlay at start; the message names the flag, the value
 * and the limit. Undefined when it fits (or no flag was given).
 */
export function defaultMtuProblem(flag: number | undefined, underlay: UnderlayInfo | undefined): string | undefined {
  if (flag === undefined) return undefined;
  const problem = checkNetworkMtu(flag, { hasIpv6: false, ...underlayContext(underlay) });
  return problem ? `invalid --default-mtu ${flag}: ${problem.reason}` : undefined;
}

function underlayContext(underlay: UnderlayInfo | undefined): { underlayMtu?: number; underlayFamily?: 4 | 6; underlayIfname?: string } {
  return underlay ? { underlayMtu: underlay.mtu, underlayFamily: underlay.family, underlayIfname: underlay.ifname } : {};
}

/**
 * The MTU a new network gets, checked: `mtu` (the API's field) or the `com.docker.network.driver.mtu`
 * option (they must agree when both are given), else this host's default. Throws InvalidInputError
 * naming the value and the reason: not an integer, below 68 (1280 with an IPv6 subnet), or above what
 * this host's underlay carries.
 */
export function chooseNetworkMtu(req: { readonly mtu?: number; readonly options?: Record<string, string>; readonly hasIpv6: boolean }, datapath: DatapathSettings): number {
  const optionText = req.options?.[MTU_OPTION];
  let fromOption: number | undefined;
  if (optionText !== undefined) {
    if (!/^\d{1,6}$/.test(optionText.trim())) throw new InvalidInputError(`invalid option ${MTU_OPTION} "${optionText}": is not an integer MTU`);
    fromOption = Number(optionText.trim());
  }
  if (req.mtu !== undefined && fromOption !== undefined && req.mtu !== fromOption) {
    throw new InvalidInputError(`invalid mtu ${req.mtu}: option ${MTU_OPTION} says ${fromOption}; give one of them`);
  }
  const given = req.mtu ?? fromOption;
  const mtu = given ?? datapath.defaultMtu;
  const problem = checkNetworkMtu(mtu, { hasIpv6: req.hasIpv6, ...underlayContext(datapath.underlay) });
  if (problem) {
    const what = given === undefined ? `default mtu ${mtu}` : req.mtu !== undefined ? `mtu ${mtu}` : `option ${MTU_OPTION} "${optionText}"`;
    throw new InvalidInputError(`invalid ${what}: ${problem.reason}`);
  }
  return mtu;
}

/** A network this host's underlay cannot carry (what `/v1/status` and `network inspect` show). */
export interface NetworkMtuWarning {
  /** Network id and name. */
  readonly network: string;
  readonly name: string;
  readonly code: typeof MTU_WARNING_CODE;
  readonly mtu: number;
  /** The largest MTU this host's underlay carries. */
  readonly limit: number;
  readonly message: string;
}

/** Pure: the warning for one network on a host with `underlay`, or undefined when it fits (or nothing is known). */
export function networkMtuWarning(n: NetworkRecord, underlay: UnderlayInfo | undefined): NetworkMtuWarning | undefined {
  if (n.mtu === undefined || !underlay) return undefined;
  const hasIpv6 = n.subnet6 !== undefined || familyOf(n.subnet) === 6;
  const problem = checkNetworkMtu(n.mtu, { hasIpv6, ...underlayContext(underlay) });
  if (!problem || problem.kind !== 'too-large') return undefined;
  return {
    network: n.id,
    name: n.name,
    code: MTU_WARNING_CODE,
    mtu: n.mtu,
    limit: problem.limit,
    message:
      `network ${n.name}: MTU ${n.mtu} ${problem.reason}; packets larger than ${problem.limit} bytes ` +
      `between this host and the others are dropped: raise ${underlay.ifname}'s MTU to at least ${n.mtu + underlay.mtu - underlay.overlayMtu}, or recreate the network with --mtu ${problem.limit} or less`,
  };
}

/** Pure: every network of the view that this host's underlay cannot carry, by name. */
export function networkMtuWarnings(view: ClusterView, underlay: UnderlayInfo | undefined): NetworkMtuWarning[] {
  const out: NetworkMtuWarning[] = [];
  for (const n of view.networks.values()) {
    const w = networkMtuWarning(n, underlay);
    if (w) out.push(w);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Logs and counts each network this host cannot carry once — when it is first seen (at start, or when
 * the network appears), not on every reconcile — and keeps the gauge of how many there are. The data
 * plane's own apply warnings for the same networks are folded in by network id.
 */
export class MtuWarningLog {
  /** Network id → where its warning came from (the view's check, or only the data plane's apply). */
  private readonly reported = new Map<string, 'view' | 'apply'>();

  constructor(
    private readonly underlay: UnderlayInfo | undefined,
    private readonly metrics: AgentMetrics,
    private readonly logger: Logger,
  ) {}

  /** Reports what is new in `view` (and in the data plane's `applyWarnings`); returns the current warnings. */
  update(view: ClusterView, applyWarnings: readonly DataplaneError[] = []): NetworkMtuWarning[] {
    const current = networkMtuWarnings(view, this.underlay);
    const flagged = new Set(current.map((w) => w.network));
    // a network that went away (or was fixed) is reported again if the problem comes back
    for (const [nid, from] of [...this.reported]) {
      if (!view.networks.has(nid) || (from === 'view' && !flagged.has(nid))) this.reported.delete(nid);
    }
    for (const w of current) {
      if (this.reported.has(w.network)) continue;
      this.reported.set(w.network, 'view');
      this.metrics.networkWarnings.inc({ code: w.code });
      this.logger.warn({ nid: w.network, network: w.name, mtu: w.mtu, limit: w.limit, underlay: this.underlay?.ifname, underlayMtu: this.underlay?.mtu, code: w.code }, w.message);
    }
    for (const err of applyWarnings) {
      const nid = err.object.network;
      if (nid === undefined || this.reported.has(nid) || !view.networks.has(nid)) continue;
      this.reported.set(nid, 'apply');
      this.metrics.networkWarnings.inc({ code: err.code });
      this.logger.warn({ nid, code: err.code }, err.message);
    }
    this.metrics.networksOverUnderlayMtu.set(current.length);
    return current;
  }
}
