/** Exit codes of the resolver process (resolver-main.ts), shared with the side that starts it. */

/** Bad command-line arguments. */
export const EXIT_BAD_ARGS = 2;
/** Another resolver process already answers on the socket: the starter connects to that one. */
export const EXIT_ALREADY_RUNNING = 3;
