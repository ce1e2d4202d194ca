/**
 * Holds the embedded store's SQLite write lock until killed: the local backend's "store outage" for
 * the cluster scenarios (readers are not blocked in WAL mode; every write waits and then fails).
 * Prints "locked" once it holds the lock.
 *
 *   node --import tsx test/cluster/sqlite-lock.ts DB_PATH
 *
 * The database handle stays referenced from the timer: an unreferenced better-sqlite3 handle is
 * garbage-collected and closed, which rolls the transaction back and silently releases the lock.
 */
import Database from 'better-sqlite3';

const [path] = process.argv.slice(2);
if (!path) throw new Error('usage: sqlite-lock.ts DB_PATH');
const db = new Database(path, { timeout: 30_000 });
db.exec('BEGIN IMMEDIATE');
db.exec('CREATE TABLE IF NOT EXISTS kvnet_test_lock (x INTEGER); INSERT INTO kvnet_test_lock VALUES (1)');
process.stdout.write('locked\n');
setInterval(() => {
  if (!db.inTransaction) {
    process.stderr.write('lost the write lock\n');
    process.exit(1);
  }
}, 200);
