/**
 * UDP and TCP sockets bound inside another network namespace, held by this process.
 *
 * A Node process cannot switch namespaces (setns is per thread and Node has several), but a socket
 * belongs to the namespace it was created in for its whole life, wherever its descriptor goes. So a
 * short-lived child is started inside the namespace (`nsenter --net=<path> node -e <script>`); it binds
 * both sockets and hands them back over Node's IPC channel (`process.send(message, handle)`, which
 * passes the descriptors with SCM_RIGHTS and re-wraps them here as a dgram.Socket and a net.Server),
 * then exits. Checked on Node 20.20 here: the parent then serves on them; the child's exit closes only
 * its own copies.
 *
 * Between binding and exiting (a few milliseconds) the child's event loop also reads from the sockets:
 * a query that arrives in exactly that window is read by the child and lost (the client's retry gets
 * through). Listeners are only opened for namespaces that have none.
 */

import { spawn } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { ListenerError } from './errors.ts';

/** Starting the child (a fresh Node: ~40 ms idle, a few hundred under load) and binding. */
export const BIND_TIMEOUT_MS = 15_000;
/** After the helper exits with an error, how long its error message may still take to arrive. */
const EXIT_GRACE_MS = 200;
/** Pending TCP connections the kernel queues per listener. */
export const TCP_BACKLOG = 128;

export interface BoundSockets {
  readonly udp: UdpSocket;
  readonly tcp: Server;
}

/** The child: CommonJS for `node -e`, no modules beyond Node's own, settings by environment. */
const CHILD_SCRIPT = `
const dgram = require('node:dgram');
const net = require('node:net');
const address = process.env.KVNET_DNS_ADDRESS;
const port = Number(process.env.KVNET_DNS_PORT);
const fail = (err) => process.send({ kind: 'error', message: String((err && err.message) || err) }, () => process.exit(1));
const udp = dgram.createSocket({ type: 'udp4' });
udp.once('error', fail);
udp.bind({ address, port, exclusive: true }, () => {
  const tcp = net.createServer();
  tcp.once('error', fail);
  tcp.listen({ host: address, port, exclusive: true, backlog: Number(process.env.KVNET_DNS_BACKLOG) }, () => {
    process.send({ kind: 'udp' }, udp, () => process.send({ kind: 'tcp' }, tcp, () => process.exit(0)));
  });
});
`;

function closeQuietly(s: BoundSockets | Partial<BoundSockets>): void {
  try {
    s.udp?.close();
  } catch {
    // not bound or already closed
  }
  s.tcp?.close();
}

/** Binds UDP and TCP `address:port` in this process's own namespace. */
export function bindHere(address: string, port: number): Promise<BoundSockets> {
  return new Promise((resolve, reject) => {
    const udp = createSocket({ type: 'udp4' });
    const failed = (err: Error): void => {
      closeQuietly({ udp });
      reject(new ListenerError(`cannot listen on ${address}:${port} in the resolver's own namespace: ${err.message}`, { cause: err }));
    };
    udp.once('error', failed);
    udp.bind({ address, port, exclusive: true }, () => {
      udp.removeListener('error', failed);
      const tcp = createServer();
      tcp.once('error', (err) => {
        closeQuietly({ udp, tcp });
        reject(new ListenerError(`cannot listen on TCP ${address}:${port} in the resolver's own namespace: ${err.message}`, { cause: err }));
      });
      tcp.listen({ host: address, port, exclusive: true, backlog: TCP_BACKLOG }, () => {
        tcp.removeAllListeners('error');
        resolve({ udp, tcp });
      });
    });
  });
}

/**
 * Binds UDP and TCP `address:port` inside the namespace at `netnsPath` (the address must already be
 * there) and returns the sockets, held by this process. Rejects with {@link ListenerError} naming the
 * namespace and the address.
 */
export function bindInNamespace(netnsPath: string, address: string, port: number, timeoutMs = BIND_TIMEOUT_MS): Promise<BoundSockets> {
  return new Promise((resolve, reject) => {
    const where = `${address}:${port} in ${netnsPath}`;
    const child = spawn('nsenter', [`--net=${netnsPath}`, process.execPath, '-e', CHILD_SCRIPT], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', KVNET_DNS_ADDRESS: address, KVNET_DNS_PORT: String(port), KVNET_DNS_BACKLOG: String(TCP_BACKLOG) },
    });
    const got: { udp?: UdpSocket; tcp?: Server } = {};
    let stderr = '';
    let settled = false;
    const finish = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err || !got.udp || !got.tcp) {
        closeQuietly(got);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        reject(err ?? new ListenerError(`cannot listen on ${where}: the helper ended without both sockets`));
        return;
      }
      resolve({ udp: got.udp, tcp: got.tcp });
    };
    const timer = setTimeout(() => finish(new ListenerError(`cannot listen on ${where}: no sockets after ${timeoutMs} ms`)), timeoutMs);
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.on('error', (err) => finish(new ListenerError(`cannot listen on ${where}: cannot run nsenter: ${err.message}`, { cause: err })));
    child.on('message', (message: { kind?: string; message?: string }, handle: unknown) => {
      if (settled) {
        // Too late (timed out or failed): nobody will serve on it.
        if (message?.kind === 'udp' && handle) closeQuietly({ udp: handle as UdpSocket });
        if (message?.kind === 'tcp' && handle) closeQuietly({ tcp: handle as Server });
        return;
      }
      if (message?.kind === 'udp' && handle) got.udp = handle as UdpSocket;
      else if (message?.kind === 'tcp' && handle) got.tcp = handle as Server;
      else if (message?.kind === 'error') finish(new ListenerError(`cannot listen on ${where}: ${message.message ?? 'unknown error'}`));
      if (got.udp && got.tcp) finish();
    });
    child.on('exit', (code, signal) => {
      // Exit 0 comes only after both handles were written, but the exit can be seen before the last
      // message is read (and a dgram handle is re-wrapped asynchronously): wait for them, up to the
      // timeout. Any other exit is a failure; a moment's grace lets its error message arrive first.
      if (code === 0) return;
      setTimeout(() => finish(new ListenerError(`cannot listen on ${where}: the helper exited ${code ?? signal}${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' ')}` : ''}`)), EXIT_GRACE_MS);
    });
  });
}
