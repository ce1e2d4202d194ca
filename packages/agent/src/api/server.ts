/**
 * The local API's routes: HTTP/1.1 JSON over the agent's unix socket (see ./index.ts for the socket).
 * Errors are `{"error": "<human message>", "code": "<machine code>"}` with a status from the error's
 * kind: invalid 400, not-found 404, conflict/exhausted 409, unavailable 503, anything else 500.
 */

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { StatusSource } from '../context.ts';
import type { DoctorFace } from '../doctor/index.ts';
import { errorCode, errorKind, InvalidInputError } from '../errors.ts';
import type { NetworkService } from '../network-service.ts';
import type { CniAttachments } from '../cni/attachments.ts';
import type { NodeService } from '../nodes.ts';
import { describeJsonError, readBody, sendJson } from '../unix-http.ts';
import { cniAttachmentRefSchema, cniAttachSchema, cniGcSchema, connectSchema, createNetworkSchema, validate } from './schemas.ts';

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** HTTP status of an error, from its kind (and a few codes the contract fixes). */
export function statusOf(err: unknown): number {
  if (err instanceof HttpError) return err.status;
  const code = errorCode(err);
  if (code === 'KVNET_IPAM_POOL_OVERLAP') return 400;
  if (code === 'KVNET_BODY_TOO_LARGE') return 413;
  switch (errorKind(err)) {
    case 'invalid':
      return 400;
    case 'not-found':
      return 404;
    case 'conflict':
    case 'exhausted':
      return 409;
    case 'unavailable':
      return 503;
    default:
      return 500;
  }
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const text = await readBody(req);
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidInputError(`request body (${Buffer.byteLength(text)} bytes) is not valid JSON: ${describeJsonError(err)}`);
  }
}

export interface ApiRoutes {
  readonly networks: NetworkService;
  readonly status: StatusSource;
  readonly logger: Logger;
  /** The CNI plugin's calls (`/v1/cni/…`). */
  readonly cni?: CniAttachments;
  /** `GET /v1/nodes` with states, `DELETE /v1/nodes/{name}` (without it, `GET /v1/nodes` lists live nodes from `status`). */
  readonly nodes?: NodeService;
  /** `GET /v1/doctor`. */
  readonly doctor?: DoctorFace;
}

/** Answers one API request; never throws. */
export async function handleApiRequest(req: IncomingMessage, res: ServerResponse, routes: ApiRoutes): Promise<void> {
  const { networks: service, status, logger } = routes;
  const url = new URL(req.url ?? '/', 'http://kvnet');
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const method = req.method ?? 'GET';
  const started = Date.now();
  try {
    if (parts[0] !== 'v1') throw new HttpError(404, `no such API path: ${url.pathname}`, 'KVNET_NO_ROUTE');
    const [, resource, ref, sub, subRef] = parts;
    if (resource === 'status' && parts.length === 2 && method === 'GET') return sendJson(res, 200, status.status());
    if (resource === 'nodes' && parts.length === 2 && method === 'GET') return sendJson(res, 200, routes.nodes ? await routes.nodes.list() : status.nodes());
    if (resource === 'nodes' && parts.length === 3 && method === 'DELETE' && routes.nodes) {
      return sendJson(res, 200, await routes.nodes.remove(ref!, ['1', 'true'].includes(url.searchParams.get('force') ?? '')));
    }
    if (resource === 'doctor' && parts.length === 2 && method === 'GET' && routes.doctor) return sendJson(res, 200, await routes.doctor.run());
    if (resource === 'networks') {
      if (parts.length === 2 && method === 'GET') return sendJson(res, 200, await service.listNetworks());
      if (parts.length === 2 && method === 'POST') {
        const input = validate(createNetworkSchema, await readJson(req));
        return sendJson(res, 201, await service.createNetwork(input));
      }
      if (parts.length === 3 && method === 'GET') return sendJson(res, 200, await service.inspectNetwork(ref!));
      if (parts.length === 3 && method === 'DELETE') {
        await service.deleteNetwork(ref!);
        return sendJson(res, 204);
      }
      if (parts.length === 4 && sub === 'endpoints' && method === 'POST') {
        const input = validate(connectSchema, await readJson(req));
        return sendJson(res, 201, await service.connect(ref!, input));
      }
      if (parts.length === 5 && sub === 'endpoints' && method === 'DELETE') {
        await service.disconnect(ref!, subRef!);
        return sendJson(res, 204);
      }
    }
    if (resource === 'cni' && routes.cni && parts.length === 3) {
      if (ref === 'attachments' && method === 'POST') {
        const { created, attachment } = await routes.cni.attach(validate(cniAttachSchema, await readJson(req)));
        return sendJson(res, created ? 201 : 200, attachment);
      }
      if (ref === 'attachments' && (method === 'GET' || method === 'DELETE')) {
        const attachment = validate(cniAttachmentRefSchema, Object.fromEntries(url.searchParams));
        if (method === 'GET') return sendJson(res, 200, await routes.cni.describe(attachment));
        await routes.cni.detach(attachment);
        return sendJson(res, 204);
      }
      if (ref === 'gc' && method === 'POST') return sendJson(res, 200, await routes.cni.gc(validate(cniGcSchema, await readJson(req))));
    }
    throw new HttpError(parts.length > 1 && ['status', 'nodes', 'networks', 'cni', 'doctor'].includes(resource!) ? 405 : 404, `no such API call: ${method} ${url.pathname}`, 'KVNET_NO_ROUTE');
  } catch (err) {
    const code = statusOf(err);
    const message = err instanceof Error ? err.message : String(err);
    const level = code >= 500 ? 'warn' : 'info';
    logger[level]({ method, path: url.pathname, status: code, code: errorCode(err), ms: Date.now() - started }, message);
    if (res.headersSent || res.destroyed) return;
    sendJson(res, code, { error: message, code: err instanceof HttpError ? err.code : errorCode(err) }, { close: code === 413 });
  }
}
