/** What `kvnet doctor` answers (`GET /v1/doctor`): one finding per check or per difference found. */

/** `fail` is a problem (non-zero exit); `warn` is worth knowing; `skip` could not be checked here. */
export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

/** The areas doctor looks at, in the order it reports them. */
export type CheckArea = 'store' | 'registration' | 'kernel' | 'sandbox' | 'iptables' | 'mtu' | 'vxlan' | 'docker' | 'dns';

/** One result: a check that passed, or one difference or problem. */
export interface DoctorFinding {
  readonly area: CheckArea;
  readonly status: CheckStatus;
  /** One line naming the thing and the value, e.g. `network multi: FDB entry 02:42:0a:00:01:03 → 198.18.0.2 (c2 on h2) is missing from vxlan0`. */
  readonly summary: string;
  /** What to do, for problems and warnings. */
  readonly fix?: string;
  /** The network (name) the finding is about, if any. */
  readonly network?: string;
  /** The node the finding is about, if any. */
  readonly node?: string;
}

export interface DoctorReport {
  /** This agent's node name. */
  readonly node: string;
  /** When the checks ran (ISO 8601). */
  readonly at: string;
  readonly durationMs: number;
  /** No finding with status `fail`. */
  readonly healthy: boolean;
  readonly problems: number;
  readonly warnings: number;
  readonly findings: readonly DoctorFinding[];
}

/** A source of findings (the names face adds its DNS checks as one). */
export type DoctorCheck = (signal: AbortSignal) => Promise<readonly DoctorFinding[]>;

/** Builds the report from findings, sorted by area (stable within an area). */
export function buildReport(node: string, startedAt: number, findings: readonly DoctorFinding[], now = Date.now()): DoctorReport {
  const order: readonly CheckArea[] = ['store', 'registration', 'kernel', 'sandbox', 'iptables', 'mtu', 'vxlan', 'docker', 'dns'];
  const sorted = [...findings].sort((a, b) => order.indexOf(a.area) - order.indexOf(b.area));
  const problems = sorted.filter((f) => f.status === 'fail').length;
  return {
    node,
    at: new Date(startedAt).toISOString(),
    durationMs: Math.round(now - startedAt),
    healthy: problems === 0,
    problems,
    warnings: sorted.filter((f) => f.status === 'warn').length,
    findings: sorted,
  };
}
