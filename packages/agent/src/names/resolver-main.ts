/**
 * The resolver process's entry: `node resolver-main.{ts,mjs} --socket <path> [--log-level info]`.
 * Started by the agent (names-client.ts) when none answers on the socket, detached, so it outlives the
 * agent. Exit codes: 0 stopped (an `exit` request, SIGTERM, SIGINT, its socket file removed or
 * replaced); 2 bad arguments; 3 another resolver already answers on the socket; 1 anything else.
 */

import { pino } from 'pino';
import { EXIT_ALREADY_RUNNING, EXIT_BAD_ARGS } from './resolver-exit-codes.ts';
import { ResolverProcess, ResolverRunningError } from './resolver-process.ts';

function parseArgs(argv: readonly string[]): { socket: string; level: string } {
  let socket: string | undefined;
  let level = 'info';
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--socket') socket = argv[++i];
    else if (argv[i] === '--log-level') level = argv[++i] ?? 'info';
    else throw new Error(`unknown argument ${JSON.stringify(argv[i])}; usage: resolver-main --socket <path> [--log-level info]`);
  }
  if (!socket || !socket.startsWith('/')) throw new Error(`--socket needs an absolute path, not ${JSON.stringify(socket)}`);
  return { socket, level };
}

async function main(): Promise<void> {
  let args: { socket: string; level: string };
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`kvnet-resolver: ${(err as Error).message}\n`);
    process.exit(EXIT_BAD_ARGS);
  }
  const logger = pino({ level: args.level, base: { component: 'kvnet-resolver', pid: process.pid } }, pino.destination({ dest: 1, sync: true }));
  const resolver = new ResolverProcess({ socketPath: args.socket, logger, onExitRequested: () => process.exit(0), onOrphaned: () => process.exit(0) });
  try {
    await resolver.start();
  } catch (err) {
    logger.error({ err: (err as Error).message }, 'kvnet resolver cannot start');
    process.exit(err instanceof ResolverRunningError ? EXIT_ALREADY_RUNNING : 1);
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      void resolver.stop(false).finally(() => process.exit(0));
    });
  }
  // Started detached with no terminal: a hang-up must not end it.
  process.on('SIGHUP', () => {});
}

void main();
