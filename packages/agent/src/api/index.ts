/**
 * The local API face: the agent's HTTP/1.1 JSON API on `--socket` (default /run/kvnet/kvnet.sock),
 * which the `kvnet` CLI and runtimes without Docker use. The socket is for root only (mode 0600; its
 * directory 0700 when the agent creates it); the stale-socket rule is unix-http.ts's.
 */

import type { AgentContext, Face } from '../context.ts';
import { CniAttachments } from '../cni/attachments.ts';
import type { DoctorFace } from '../doctor/index.ts';
import { NodeService } from '../nodes.ts';
import { listenUnix } from '../unix-http.ts';
import { handleApiRequest } from './server.ts';

export const API_SOCKET_MODE = 0o600;
export const API_SOCKET_DIR_MODE = 0o700;

export { statusOf } from './server.ts';
export { connectSchema, createNetworkSchema, validate, type ConnectInput, type CreateNetworkInput } from './schemas.ts';

/** Other faces the API serves: `GET /v1/doctor`, and the doctor's probes in `node ls`. */
export interface ApiFaces {
  readonly doctor?: DoctorFace;
}

/** Starts the local API on the configured socket. */
export async function startApi(ctx: AgentContext, faces: ApiFaces = {}): Promise<Face> {
  const logger = ctx.logger.child({ component: 'api' });
  const nodes = new NodeService(ctx, () => faces.doctor?.probes() ?? new Map());
  const routes = { networks: ctx.networks, status: ctx.status, logger, nodes, cni: new CniAttachments(ctx), ...(faces.doctor ? { doctor: faces.doctor } : {}) };
  const server = await listenUnix(
    ctx.config.socketPath,
    (req, res) => void handleApiRequest(req, res, routes),
    { mode: API_SOCKET_MODE, dirMode: API_SOCKET_DIR_MODE, what: 'the local API (--socket)', logger },
  );
  return { stop: () => server.close() };
}
