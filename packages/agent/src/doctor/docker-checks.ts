/**
 * Doctor's Docker checks (only with `--docker-plugin`): the plugin socket answers `Plugin.Activate`
 * as a NetworkDriver and IpamDriver, the local dockerd answers on `--docker-socket`, and (scope
 * `local`) every kvnet network is known to this host's dockerd.
 */

import type { ClusterView } from '../cluster-view.ts';
import type { AgentConfig } from '../config.ts';
import { unixRequest } from '../unix-http.ts';
import type { DoctorFinding } from './report.ts';

/** How long each Docker call may take. */
const DOCKER_CALL_TIMEOUT_MS = 3_000;

export async function dockerChecks(config: AgentConfig, view: ClusterView, signal: AbortSignal): Promise<DoctorFinding[]> {
  if (config.dockerPlugin === undefined || config.dockerPlugin === 'off') return [];
  const out: DoctorFinding[] = [];
  const plugin = config.dockerPlugin;
  try {
    const r = await unixRequest({ socketPath: plugin, method: 'POST', path: '/Plugin.Activate', body: {}, timeoutMs: DOCKER_CALL_TIMEOUT_MS, signal });
    const impl = (r.body as { Implements?: string[] } | undefined)?.Implements ?? [];
    if (r.status === 200 && impl.includes('NetworkDriver') && impl.includes('IpamDriver')) out.push({ area: 'docker', status: 'ok', summary: `plugin socket ${plugin} answers (${impl.join(', ')})` });
    else out.push({ area: 'docker', status: 'fail', summary: `plugin socket ${plugin} answered Plugin.Activate with HTTP ${r.status} ${r.text.slice(0, 120)}`, fix: 'another program may hold the socket; stop it and restart the agent' });
  } catch (err) {
    out.push({ area: 'docker', status: 'fail', summary: `plugin socket ${plugin} does not answer (${(err as Error).message}): dockerd cannot use kvnet networks`, fix: 'restart the agent and look for errors from its Docker face in the log' });
  }
  if (config.dockerSocket === undefined || config.dockerSocket === 'off') return out;
  const engine = config.dockerSocket;
  try {
    const ping = await unixRequest({ socketPath: engine, method: 'GET', path: '/_ping', timeoutMs: DOCKER_CALL_TIMEOUT_MS, signal });
    if (ping.status !== 200) throw new Error(`HTTP ${ping.status}`);
    const version = await unixRequest({ socketPath: engine, method: 'GET', path: '/version', timeoutMs: DOCKER_CALL_TIMEOUT_MS, signal });
    const v = version.body as { Version?: string; ApiVersion?: string } | undefined;
    out.push({ area: 'docker', status: 'ok', summary: `dockerd ${v?.Version ?? '?'} (API ${v?.ApiVersion ?? '?'}) answers on ${engine}` });
    if (config.dockerScope !== 'global') {
      const nets = await unixRequest({ socketPath: engine, method: 'GET', path: '/networks', timeoutMs: DOCKER_CALL_TIMEOUT_MS, signal });
      const driver = config.dockerDriverName ?? 'kvnet';
      const names = new Set(((nets.body as Array<{ Name: string; Driver: string }>) ?? []).filter((n) => n.Driver === driver).map((n) => n.Name));
      const missing = [...view.networks.values()].filter((n) => !n.deleting && !names.has(n.name)).map((n) => n.name).sort();
      if (missing.length > 0) {
        out.push({ area: 'docker', status: 'warn', summary: `kvnet network(s) not (yet) in this host's dockerd: ${missing.join(', ')}`, fix: 'the agent adds them within seconds; if they stay, look for Engine API errors in the agent log' });
      }
    }
  } catch (err) {
    out.push({ area: 'docker', status: 'fail', summary: `dockerd does not answer on ${engine} (${(err as Error).message}): kvnet networks are not mirrored into Docker and container names are not learned`, fix: 'start dockerd, or run the agent with --docker-socket pointing at it' });
  }
  return out;
}
