/**
 * Holds the embedded store's SQLite write lock until killed: the local backend's "store outage" for
 * the cluster scenarios (readers are not blocked in WAL mode; every write waits and then fails).
 * Prints "locked" once it holds the lock.
 *
 *   node --import tsx test/cluster/sqlite-lock.ts DB_PATH
 *
 * The cluster harness (test/support/cluster.ts) starts this path; the lock holder itself is the store
 * suite's outage fixture, so both outages are the same.
 */
import '../../packages/store/test/fixtures/sqlite-locker.ts';
