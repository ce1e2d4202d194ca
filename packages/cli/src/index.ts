/**
 * @packageDocumentation
 * The `kvnet` command line (`src/main.ts`); {@link runCli} runs it in-process for tests.
 */

export { buildProgram, runCli, CliExit, EXIT_FAILURE, EXIT_USAGE, type CliIo } from './program.ts';
export { ApiClient, ApiError } from './client.ts';
