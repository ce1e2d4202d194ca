/**
 * Docker's remote NetworkDriver and IpamDriver plugin protocol (libnetwork `drivers/remote/api`,
 * `ipams/remote/api`): request schemas, response shapes, and one pure function,
 * {@link dispatchPluginCall}, that turns a method and a raw body into a status and a JSON answer.
 *
 * Wire rules that matter: every call is `POST /<Method>` with a Go-encoded JSON body (empty for
 * `Plugin.Activate` and the capability calls); Docker reads an error from `Err` for the network driver
 * and from `Error` for IPAM in an HTTP 200 answer (`remote: <msg>`). Unknown methods answer 404 —
 * which Docker treats as "not implemented" for Program/RevokeExternalConnectivity only.
 */

import { z } from 'zod';
import { describeJsonError } from '../unix-http.ts';

/**
 * The plugin's name as drivers when it runs from a socket in /run/docker/plugins: `-d kvnet
 * --ipam-driver kvnet`. A managed plugin is known to dockerd by its plugin reference instead
 * (`kvnet:latest` for `docker plugin create kvnet …`), which the agent is told with
 * `--docker-driver-name` (the plugin's `DOCKER_DRIVER_NAME` setting).
 */
export const PLUGIN_NAME = 'kvnet';
/** The address space kvnet reports to Docker (local and global); Docker's own IPAM uses LocalDefault/GlobalDefault. */
export const KVNET_ADDRESS_SPACE = 'kvnet';
/** `--ipam-opt` naming the existing kvnet network whose pool a Docker network uses (set by the network sync). */
export const ADOPT_NETWORK_OPTION = 'kvnet.network';
/** Content type of every answer (go-plugins-helpers' convention; Docker ignores it). */
export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';
/** `RequestAddress` option marking the gateway request. */
export const REQUEST_ADDRESS_TYPE = 'RequestAddressType';
export const GATEWAY_ADDRESS_TYPE = 'com.docker.network.gateway';
/** CreateNetwork option keys. */
export const OPTION_INTERNAL = 'com.docker.network.internal';
export const OPTION_GENERIC = 'com.docker.network.generic';
export const OPTION_IPV6 = 'com.docker.network.enable_ipv6';

const str = z.string();
const looseMap = z.record(z.string(), z.unknown());
/** Go encodes a nil map as `null`. */
const optMap = looseMap.nullish().transform((v) => v ?? {});

export const IpamDataSchema = z.object({
  AddressSpace: str.optional().default(''),
  Pool: str,
  Gateway: str.optional(),
  AuxAddresses: z.record(z.string(), z.string()).nullish(),
});
export type IpamData = z.infer<typeof IpamDataSchema>;

export const CreateNetworkRequestSchema = z.object({
  NetworkID: str.min(1),
  Options: optMap,
  IPv4Data: z.array(IpamDataSchema).nullish().transform((v) => v ?? []),
  IPv6Data: z.array(IpamDataSchema).nullish().transform((v) => v ?? []),
});
export type CreateNetworkRequest = z.infer<typeof CreateNetworkRequestSchema>;

export const NetworkRequestSchema = z.object({ NetworkID: str.min(1) });
export type NetworkRequest = z.infer<typeof NetworkRequestSchema>;

export const EndpointRequestSchema = z.object({ NetworkID: str.min(1), EndpointID: str.min(1) });
export type EndpointRequest = z.infer<typeof EndpointRequestSchema>;

export const CreateEndpointRequestSchema = z.object({
  NetworkID: str.min(1),
  EndpointID: str.min(1),
  Interface: z
    .object({ Address: str.optional().default(''), AddressIPv6: str.optional().default(''), MacAddress: str.optional().default('') })
    .nullish(),
  Options: optMap,
});
export type CreateEndpointRequest = z.infer<typeof CreateEndpointRequestSchema>;

export const JoinRequestSchema = z.object({
  NetworkID: str.min(1),
  EndpointID: str.min(1),
  SandboxKey: str.optional().default(''),
  Options: optMap,
});
export type JoinRequest = z.infer<typeof JoinRequestSchema>;

export const DiscoveryRequestSchema = z.object({ DiscoveryType: z.number(), DiscoveryData: z.unknown() });

export const RequestPoolSchema = z.object({
  AddressSpace: str.optional().default(''),
  Pool: str.optional().default(''),
  SubPool: str.optional().default(''),
  Options: z.record(z.string(), z.string()).nullish().transform((v) => v ?? {}),
  V6: z.boolean().optional().default(false),
});
export type RequestPoolRequest = z.infer<typeof RequestPoolSchema>;

export const PoolRequestSchema = z.object({ PoolID: str.min(1) });

export const RequestAddressSchema = z.object({
  PoolID: str.min(1),
  Address: str.optional().default(''),
  /** `null` for aux addresses, `{RequestAddressType: gateway}` for the gateway. */
  Options: z.record(z.string(), z.string()).nullish(),
});
export type RequestAddressRequest = z.infer<typeof RequestAddressSchema>;

export const ReleaseAddressSchema = z.object({ PoolID: str.min(1), Address: str.min(1) });

export interface JoinResponse {
  InterfaceName: { SrcName: string; DstPrefix: string };
  Gateway?: string;
  GatewayIPv6?: string;
  StaticRoutes?: Array<{ Destination: string; RouteType: number; NextHop: string }>;
  DisableGatewayService?: boolean;
}

/** What the plugin does for each method; {@link dispatchPluginCall} validates input and maps errors. */
export interface PluginHandlers {
  networkCapabilities(): { Scope: 'local' | 'global'; ConnectivityScope: 'local' | 'global' };
  createNetwork(req: CreateNetworkRequest): Promise<void>;
  deleteNetwork(req: NetworkRequest): Promise<void>;
  createEndpoint(req: CreateEndpointRequest): Promise<{ Interface?: { MacAddress?: string } }>;
  deleteEndpoint(req: EndpointRequest): Promise<void>;
  endpointOperInfo(req: EndpointRequest): Promise<Record<string, unknown>>;
  join(req: JoinRequest): Promise<JoinResponse>;
  leave(req: EndpointRequest): Promise<void>;
  ipamCapabilities(): { RequiresMACAddress: boolean; RequiresRequestReplay: boolean };
  defaultAddressSpaces(): { LocalDefaultAddressSpace: string; GlobalDefaultAddressSpace: string };
  requestPool(req: RequestPoolRequest): Promise<{ PoolID: string; Pool: string; Data: Record<string, string> }>;
  releasePool(req: { PoolID: string }): Promise<void>;
  requestAddress(req: RequestAddressRequest): Promise<{ Address: string; Data: Record<string, string> }>;
  releaseAddress(req: { PoolID: string; Address: string }): Promise<void>;
}

export interface PluginAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
  /** The error, when the call failed (for logging). */
  readonly error?: unknown;
}

type Family = 'plugin' | 'network' | 'ipam';

interface MethodSpec {
  readonly family: Family;
  readonly schema?: z.ZodType;
  readonly run: (h: PluginHandlers, req: any) => Promise<Record<string, unknown>> | Record<string, unknown>;
}

const ok = (): Record<string, unknown> => ({});

/** Every method the plugin answers, by URL path without the leading slash. */
export const PLUGIN_METHODS: Readonly<Record<string, MethodSpec>> = {
  'Plugin.Activate': { family: 'plugin', run: () => ({ Implements: ['NetworkDriver', 'IpamDriver'] }) },
  'NetworkDriver.GetCapabilities': { family: 'network', run: (h) => h.networkCapabilities() },
  'NetworkDriver.CreateNetwork': { family: 'network', schema: CreateNetworkRequestSchema, run: async (h, r) => (await h.createNetwork(r), ok()) },
  'NetworkDriver.DeleteNetwork': { family: 'network', schema: NetworkRequestSchema, run: async (h, r) => (await h.deleteNetwork(r), ok()) },
  'NetworkDriver.CreateEndpoint': { family: 'network', schema: CreateEndpointRequestSchema, run: (h, r) => h.createEndpoint(r) },
  'NetworkDriver.DeleteEndpoint': { family: 'network', schema: EndpointRequestSchema, run: async (h, r) => (await h.deleteEndpoint(r), ok()) },
  'NetworkDriver.EndpointOperInfo': { family: 'network', schema: EndpointRequestSchema, run: async (h, r) => ({ Value: await h.endpointOperInfo(r) }) },
  'NetworkDriver.Join': { family: 'network', schema: JoinRequestSchema, run: async (h, r) => ({ ...(await h.join(r)) }) },
  'NetworkDriver.Leave': { family: 'network', schema: EndpointRequestSchema, run: async (h, r) => (await h.leave(r), ok()) },
  // Node discovery: kvnet learns nodes from its own store, so these are acknowledged and ignored.
  'NetworkDriver.DiscoverNew': { family: 'network', schema: DiscoveryRequestSchema, run: ok },
  'NetworkDriver.DiscoverDelete': { family: 'network', schema: DiscoveryRequestSchema, run: ok },
  // Called only for an endpoint that provides the sandbox's gateway; kvnet never does (docker_gwbridge does).
  'NetworkDriver.ProgramExternalConnectivity': { family: 'network', schema: EndpointRequestSchema, run: ok },
  'NetworkDriver.RevokeExternalConnectivity': { family: 'network', schema: EndpointRequestSchema, run: ok },
  'IpamDriver.GetCapabilities': { family: 'ipam', run: (h) => h.ipamCapabilities() },
  'IpamDriver.GetDefaultAddressSpaces': { family: 'ipam', run: (h) => h.defaultAddressSpaces() },
  'IpamDriver.RequestPool': { family: 'ipam', schema: RequestPoolSchema, run: (h, r) => h.requestPool(r) },
  'IpamDriver.ReleasePool': { family: 'ipam', schema: PoolRequestSchema, run: async (h, r) => (await h.releasePool(r), ok()) },
  'IpamDriver.RequestAddress': { family: 'ipam', schema: RequestAddressSchema, run: (h, r) => h.requestAddress(r) },
  'IpamDriver.ReleaseAddress': { family: 'ipam', schema: ReleaseAddressSchema, run: async (h, r) => (await h.releaseAddress(r), ok()) },
};

/** The field Docker reads an error from: `Error` for IPAM, `Err` otherwise. */
export function errorField(method: string): 'Err' | 'Error' {
  return method.startsWith('IpamDriver.') ? 'Error' : 'Err';
}

/** One-line reason of a zod failure, naming the field. */
function describeZodError(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`)
    .join('; ');
}

/**
 * Answers one plugin call. Never throws: a bad body, a handler error or an unknown method becomes an
 * answer Docker understands. `method` is the URL path without its leading slash.
 */
export async function dispatchPluginCall(method: string, rawBody: string, handlers: PluginHandlers): Promise<PluginAnswer> {
  const spec = Object.hasOwn(PLUGIN_METHODS, method) ? PLUGIN_METHODS[method] : undefined;
  const field = errorField(method);
  if (!spec) return { status: 404, body: { Err: `kvnet plugin: unknown method ${method}` } };
  let input: unknown;
  if (spec.schema) {
    let json: unknown;
    try {
      json = rawBody.trim() === '' ? undefined : JSON.parse(rawBody);
    } catch (err) {
      return { status: 200, body: { [field]: `kvnet: ${method}: malformed JSON body: ${describeJsonError(err)}` }, error: err };
    }
    const parsed = spec.schema.safeParse(json);
    if (!parsed.success) {
      return { status: 200, body: { [field]: `kvnet: ${method}: invalid request (${describeZodError(parsed.error)})` }, error: parsed.error };
    }
    input = parsed.data;
  }
  try {
    return { status: 200, body: await spec.run(handlers, input) };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return { status: 200, body: { [field]: message }, error: err };
  }
}
