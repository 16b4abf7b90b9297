//! [`SqliteLinkState`]: a [`LinkState`] persisted in one SQLite database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flwr_proto::{ConfigsRecord, Context, Run, RunStatus, Scalar, TaskIns, TaskRes};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::lifecycle::{pending_status, transition, PENDING};
use crate::link_state::{NodeCounts, TaskCounts, LOG_TIMESTAMP_EPSILON};
use crate::task::{
    accept_task_res, distinct_task_ids, expired_for_delivery, expired_for_results,
    message_unavailable_reply, parse_task_id, reply_fits_instruction, reply_unavailable_reply,
    store_task_ins_batch, PushTaskInsError, TaskInsDropped,
};
use crate::{fresh_id, isoformat, Clock, LinkState, StateError};

/// Schema migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_scale.sql")),
    (3, include_str!("../migrations/0003_delivered_at.sql")),
];

/// How long a statement waits for another process's lock on the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection. rusqlite's default (16) is fewer than the distinct
/// statements the store uses, and an evicted statement is re-parsed on its next call.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Page cache size in KiB (`PRAGMA cache_size` takes negative values as KiB): enough for the
/// node table and its indexes with 50 000 nodes, so hot lookups do not read the file.
const CACHE_KIB: i64 = 32 * 1024;

/// The next undelivered TaskIns of a named consumer; served by `idx_task_ins_queue`.
const NAMED_QUEUE: &str = "SELECT seq, task_ins FROM task_ins WHERE delivered = 0 \
     AND consumer_anonymous = 0 AND consumer_node_id = ?1 ORDER BY seq LIMIT ?2";

/// The next undelivered TaskIns of anonymous consumers; served by `idx_task_ins_queue`. Their
/// `consumer_node_id` is always 0 (validation), and naming it keeps the index in `seq` order.
const ANONYMOUS_QUEUE: &str = "SELECT seq, task_ins FROM task_ins WHERE delivered = 0 \
     AND consumer_anonymous = 1 AND consumer_node_id = 0 ORDER BY seq LIMIT ?1";

/// Takes a TaskIns out of the delivery queue with its delivery time; the blob (which may hold
/// a large model) is neither re-encoded nor rewritten.
const DELIVER: &str = "UPDATE task_ins SET delivered = 1 WHERE seq = ?1";

/// The delivery time of a TaskIns just taken out of the queue.
const DELIVERED_AT: &str = "INSERT OR REPLACE INTO task_ins_delivery (seq, delivered_at) \
     VALUES (?1, ?2)";

/// Takes an expired TaskIns out of the delivery queue, unchanged.
const DROP_EXPIRED: &str = "UPDATE task_ins SET delivered = 1 WHERE seq = ?1";

/// Liveness refresh (Ping).
const PING: &str = "UPDATE node SET online_until = ?1, ping_interval = ?2 WHERE node_id = ?3";

/// Whether one node is online; no row for an unknown node.
const NODE_ONLINE: &str = "SELECT online_until > ?2 FROM node WHERE node_id = ?1";

/// The node bound to a public key; served by the column's UNIQUE index.
const NODE_OF_KEY: &str = "SELECT node_id FROM node WHERE public_key = ?1";

/// Whether a node id is registered.
const NODE_EXISTS: &str = "SELECT 1 FROM node WHERE node_id = ?1";

/// Registers a node.
const INSERT_NODE: &str = "INSERT INTO node (node_id, online_until, ping_interval, public_key) \
     VALUES (?1, ?2, ?3, ?4)";

/// Ids of online nodes; covered by `idx_online_until`.
const ONLINE_NODES: &str = "SELECT node_id FROM node WHERE online_until > ?1";

/// Columns of `run`, in the order [`run_from_row`] reads them.
const RUN_COLUMNS: &str = "run_id, fab_id, fab_version, fab_hash, override_config, pending_at, \
     starting_at, running_at, finished_at, status, sub_status, details";

/// A [`LinkState`] in a SQLite database file (`--database <path>`), or in a private in-memory
/// database for `:memory:`.
///
/// One connection behind a mutex serves every call, so `:memory:` behaves like a file (the
/// reference opened a fresh, empty in-memory database per call). The lock is held for one
/// call's statements only; calls block on SQLite I/O, so run them in `spawn_blocking`.
/// Files use WAL journaling and foreign keys are enforced.
///
/// The SuperNode-facing calls are index lookups on cached prepared statements: a pull reads
/// only the requesting node's queue (`idx_task_ins_queue`), Ping, `is_node_online` and
/// `create_node` touch one `node` row (by rowid or the `public_key` UNIQUE index).
/// `online_nodes` and the online count of `node_counts` range-scan `idx_online_until`; the
/// registered count is SQLite's `COUNT(*)`, a walk of the smallest index (metrics only).
#[derive(Debug)]
pub struct SqliteLinkState {
    clock: Arc<dyn Clock>,
    connection: Mutex<Connection>,
}

impl SqliteLinkState {
    /// Opens (creating if missing) the database at `path`, or a fresh in-memory database for
    /// `:memory:`, and applies pending schema migrations.
    ///
    /// # Errors
    ///
    /// [`StateError::Storage`] if the file cannot be opened or migrated;
    /// [`StateError::UnsupportedSchema`] if it was written by a newer schema.
    pub fn open(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        create_private(path.as_ref());
        let connection = Connection::open(path)?;
        Self::with_connection(connection, clock)
    }

    /// A store in a fresh private in-memory database.
    ///
    /// # Errors
    ///
    /// [`StateError::Storage`] if SQLite fails to set it up.
    pub fn open_in_memory(clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        Self::with_connection(Connection::open_in_memory()?, clock)
    }

    /// Configures the connection and migrates the schema.
    fn with_connection(
        mut connection: Connection,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StateError> {
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Returns the resulting mode: "wal" for files, "memory" for in-memory databases.
        let _mode: String =
            connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        // With WAL, NORMAL syncs only at checkpoints: a commit is in the WAL file before the
        // call returns, so it survives a killed process; only an OS crash or power loss can
        // lose the last commits (never corrupt the database).
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "cache_size", -CACHE_KIB)?;
        migrate(&mut connection)?;
        Ok(Self {
            clock,
            connection: Mutex::new(connection),
        })
    }

    /// Locks the connection. A panic mid-call rolls back its open transaction when the
    /// `Transaction` drops, so a poisoned lock still guards a consistent database.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies every migration newer than the database's `user_version`.
fn migrate(connection: &mut Connection) -> Result<(), StateError> {
    let current: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if current > latest {
        return Err(StateError::UnsupportedSchema(current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        let tx = connection.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

/// A u64 id as the i64 with the same bit pattern (how ids are stored).
fn sql_id(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

/// The u64 id stored as `value`.
fn id_from_sql(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Decodes a stored protobuf blob.
fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StateError> {
    Ok(M::decode(bytes)?)
}

/// Decodes a task blob read from the database; its array payloads become slices of the blob
/// instead of copies.
fn decode_task<M: Message + Default>(blob: Vec<u8>) -> Result<M, StateError> {
    Ok(M::decode(prost::bytes::Bytes::from(blob))?)
}

/// Whether a run exists.
fn run_exists(connection: &Connection, run_id: u64) -> Result<bool, StateError> {
    let found = connection
        .prepare_cached("SELECT 1 FROM run WHERE run_id = ?1")?
        .exists([sql_id(run_id)])?;
    Ok(found)
}

/// The raw columns of a `run` row (see [`RUN_COLUMNS`]); decoded by [`RunRow::into_run`].
struct RunRow {
    run_id: i64,
    fab_id: String,
    fab_version: String,
    fab_hash: String,
    override_config: Vec<u8>,
    timestamps: [String; 4],
    status: RunStatus,
}

/// Reads the [`RUN_COLUMNS`] of a row.
fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        run_id: row.get(0)?,
        fab_id: row.get(1)?,
        fab_version: row.get(2)?,
        fab_hash: row.get(3)?,
        override_config: row.get(4)?,
        timestamps: [row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?],
        status: RunStatus {
            status: row.get(9)?,
            sub_status: row.get(10)?,
            details: row.get(11)?,
        },
    })
}

impl RunRow {
    /// The full `Run` this row stores.
    fn into_run(self) -> Result<Run, StateError> {
        let carrier: Run = decode(&self.override_config)?;
        let [pending_at, starting_at, running_at, finished_at] = self.timestamps;
        Ok(Run {
            run_id: id_from_sql(self.run_id),
            fab_id: self.fab_id,
            fab_version: self.fab_version,
            override_config: carrier.override_config,
            fab_hash: self.fab_hash,
            pending_at,
            starting_at,
            running_at,
            finished_at,
            status: Some(self.status),
        })
    }
}

/// Loads one run.
fn load_run(connection: &Connection, run_id: u64) -> Result<Option<Run>, StateError> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM run WHERE run_id = ?1");
    let row = connection
        .prepare_cached(&sql)?
        .query_row([sql_id(run_id)], run_from_row)
        .optional()?;
    row.map(RunRow::into_run).transpose()
}

/// Loads a TaskIns by its canonical id.
fn load_task_ins(tx: &Transaction<'_>, task_id: &str) -> Result<Option<TaskIns>, StateError> {
    let row: Option<(Vec<u8>, String)> = tx
        .prepare_cached(
            "SELECT task_ins, COALESCE(delivery.delivered_at, '') FROM task_ins \
             LEFT JOIN task_ins_delivery AS delivery USING (seq) WHERE task_id = ?1",
        )?
        .query_row([task_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    row.map(|(blob, delivered_at)| {
        let mut task_ins: TaskIns = decode_task(blob)?;
        // Rows delivered before schema 3 carry the time in the blob and have no delivery row.
        if let Some(task) = task_ins.task.as_mut().filter(|_| !delivered_at.is_empty()) {
            task.delivered_at = delivered_at;
        }
        Ok(task_ins)
    })
    .transpose()
}

/// Deletes a TaskIns (by canonical id) and its reply, if any.
fn delete_pair(tx: &Transaction<'_>, task_id: &str) -> Result<(), StateError> {
    tx.prepare_cached("DELETE FROM task_res WHERE ins_id = ?1")?
        .execute([task_id])?;
    tx.prepare_cached("DELETE FROM task_ins WHERE task_id = ?1")?
        .execute([task_id])?;
    Ok(())
}

impl SqliteLinkState {
    /// Stores one accepted TaskIns ([`store_task_ins_batch`] validated it); `None` when its run
    /// or named consumer is unknown.
    fn insert_task_ins(&self, mut task_ins: TaskIns) -> Result<Option<String>, StateError> {
        let Some(consumer) = task_ins.task.as_ref().and_then(|task| task.consumer) else {
            return Ok(None);
        };
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        if !run_exists(&tx, task_ins.run_id)? {
            return Ok(None);
        }
        if !consumer.anonymous {
            let known = tx
                .prepare_cached(NODE_EXISTS)?
                .exists([sql_id(consumer.node_id)])?;
            if !known {
                return Ok(None);
            }
        }
        let task_id = crate::task::new_task_id();
        task_ins.task_id.clone_from(&task_id);
        tx.prepare_cached(
            "INSERT INTO task_ins (task_id, run_id, consumer_anonymous, consumer_node_id, \
             task_ins) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            task_id,
            sql_id(task_ins.run_id),
            consumer.anonymous,
            sql_id(consumer.node_id),
            task_ins.encode_to_vec(),
        ])?;
        tx.commit()?;
        Ok(Some(task_id))
    }
}

impl LinkState for SqliteLinkState {
    fn store_task_ins(
        &self,
        run_id: u64,
        task_ins_list: Vec<TaskIns>,
    ) -> Result<Vec<Result<String, TaskInsDropped>>, PushTaskInsError> {
        let now = self.clock.now();
        store_task_ins_batch(run_id, task_ins_list, now, |task_ins| {
            self.insert_task_ins(task_ins)
        })
    }

    fn task_ins_for_node(
        &self,
        node_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskIns>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        // Formatted only once something is delivered: most pulls find nothing.
        let mut delivered_at = None;
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let mut out = Vec::new();
        // Each round reads at most the still-missing count; expired rows met on the way leave
        // the queue, so a round that comes back full but short of deliverable rows is retried.
        loop {
            let wanted = limit - out.len();
            let rows = queued_task_ins(&tx, node_id, wanted)?;
            let fetched = rows.len();
            for (seq, blob) in rows {
                let mut task_ins: TaskIns = decode_task(blob)?;
                let deliverable = task_ins
                    .task
                    .as_mut()
                    .filter(|task| !expired_for_delivery(task, now));
                // An expired TaskIns can never be delivered again (time only moves forward):
                // it leaves the queue but stays stored until its results are pulled.
                let Some(task) = deliverable else {
                    tx.prepare_cached(DROP_EXPIRED)?.execute([seq])?;
                    continue;
                };
                delivered_at
                    .get_or_insert_with(|| isoformat(now))
                    .clone_into(&mut task.delivered_at);
                tx.prepare_cached(DELIVER)?.execute([seq])?;
                tx.prepare_cached(DELIVERED_AT)?
                    .execute(params![seq, task.delivered_at])?;
                out.push(task_ins);
            }
            if fetched < wanted || out.len() >= limit {
                break;
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn store_task_res(&self, mut task_res: TaskRes) -> Result<Option<String>, StateError> {
        let now = self.clock.now();
        let Some(ins_id) = accept_task_res(&mut task_res, now)? else {
            return Ok(None);
        };
        let ins_id = ins_id.hyphenated().to_string();
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let Some(task_ins) = load_task_ins(&tx, &ins_id)? else {
            return Ok(None);
        };
        if !reply_fits_instruction(&task_ins, &task_res, now) {
            return Ok(None);
        }
        if !run_exists(&tx, task_res.run_id)? {
            return Ok(None);
        }
        let task_id = crate::task::new_task_id();
        task_res.task_id.clone_from(&task_id);
        tx.prepare_cached("DELETE FROM task_res WHERE ins_id = ?1")?
            .execute([&ins_id])?;
        tx.prepare_cached(
            "INSERT INTO task_res (task_id, ins_id, run_id, task_res) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            task_id,
            ins_id,
            sql_id(task_res.run_id),
            task_res.encode_to_vec()
        ])?;
        tx.commit()?;
        Ok(Some(task_id))
    }

    fn task_res(&self, task_ids: &[String]) -> Result<Vec<TaskRes>, StateError> {
        let ids = distinct_task_ids(task_ids)?
            .into_iter()
            .map(|id| id.hyphenated().to_string());
        let now = self.clock.now();
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let mut out = Vec::new();
        for id in ids {
            let task_ins = load_task_ins(&tx, &id)?;
            let Some(task_ins) = task_ins.filter(|ins| {
                ins.task
                    .as_ref()
                    .is_some_and(|task| !expired_for_results(task, now))
            }) else {
                out.push(message_unavailable_reply(&id, now));
                delete_pair(&tx, &id)?;
                continue;
            };
            let blob: Option<Vec<u8>> = tx
                .prepare_cached("SELECT task_res FROM task_res WHERE ins_id = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            let Some(blob) = blob else {
                continue;
            };
            let mut reply: TaskRes = decode_task(blob)?;
            if reply
                .task
                .as_ref()
                .is_none_or(|task| expired_for_results(task, now))
            {
                reply = reply_unavailable_reply(&task_ins, now);
            } else if let Some(task) = reply.task.as_mut() {
                task.delivered_at = isoformat(now);
            }
            out.push(reply);
            delete_pair(&tx, &id)?;
        }
        tx.commit()?;
        Ok(out)
    }

    fn replies_pending(&self, task_ids: &[String]) -> Result<usize, StateError> {
        let ids: std::collections::HashSet<String> = task_ids
            .iter()
            .filter_map(|text| parse_task_id(text).ok())
            .map(|id| id.hyphenated().to_string())
            .collect();
        let connection = self.lock();
        let mut waiting = connection.prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM task_ins WHERE task_id = ?1) \
             AND NOT EXISTS(SELECT 1 FROM task_res WHERE ins_id = ?1)",
        )?;
        let mut pending = 0;
        for id in &ids {
            if waiting.query_row([id], |row| row.get::<_, bool>(0))? {
                pending += 1;
            }
        }
        Ok(pending)
    }

    fn delete_tasks_of_run(&self, run_id: u64) -> Result<(), StateError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        tx.execute(
            "DELETE FROM task_res WHERE run_id = ?1 \
             OR ins_id IN (SELECT task_id FROM task_ins WHERE run_id = ?1)",
            [sql_id(run_id)],
        )?;
        tx.execute("DELETE FROM task_ins WHERE run_id = ?1", [sql_id(run_id)])?;
        tx.commit()?;
        Ok(())
    }

    fn task_counts(&self) -> Result<TaskCounts, StateError> {
        let connection = self.lock();
        let count = |table: &str| -> Result<usize, StateError> {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            let n: i64 = connection.query_row(&sql, [], |row| row.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok(TaskCounts {
            task_ins: count("task_ins")?,
            task_res: count("task_res")?,
        })
    }

    fn create_node(
        &self,
        ping_interval: f64,
        public_key: Option<&[u8]>,
    ) -> Result<u64, StateError> {
        let now = self.clock.now();
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        if let Some(key) = public_key {
            let bound: Option<i64> = tx
                .prepare_cached(NODE_OF_KEY)?
                .query_row([key], |row| row.get(0))
                .optional()?;
            if let Some(existing) = bound {
                return Err(StateError::PublicKeyInUse(id_from_sql(existing)));
            }
        }
        let node_id = fresh_id(|id| {
            let taken = tx.prepare_cached(NODE_EXISTS)?.exists([sql_id(id)])?;
            Ok(taken)
        })?;
        tx.prepare_cached(INSERT_NODE)?.execute(params![
            sql_id(node_id),
            now + ping_interval,
            ping_interval,
            public_key
        ])?;
        tx.commit()?;
        Ok(node_id)
    }

    fn delete_node(&self, node_id: u64) -> Result<(), StateError> {
        // The key binding lives in the node row, so it goes with it.
        let deleted = self
            .lock()
            .prepare_cached("DELETE FROM node WHERE node_id = ?1")?
            .execute([sql_id(node_id)])?;
        if deleted == 0 {
            return Err(StateError::NodeNotFound(node_id));
        }
        Ok(())
    }

    fn node_id_for_public_key(&self, public_key: &[u8]) -> Result<Option<u64>, StateError> {
        let connection = self.lock();
        let id: Option<i64> = connection
            .prepare_cached(NODE_OF_KEY)?
            .query_row([public_key], |row| row.get(0))
            .optional()?;
        Ok(id.map(id_from_sql))
    }

    fn acknowledge_ping(&self, node_id: u64, ping_interval: f64) -> Result<bool, StateError> {
        let now = self.clock.now();
        let updated = self.lock().prepare_cached(PING)?.execute(params![
            now + ping_interval,
            ping_interval,
            sql_id(node_id)
        ])?;
        Ok(updated > 0)
    }

    fn is_node_online(&self, node_id: u64) -> Result<bool, StateError> {
        let now = self.clock.now();
        let connection = self.lock();
        let online: Option<bool> = connection
            .prepare_cached(NODE_ONLINE)?
            .query_row(params![sql_id(node_id), now], |row| row.get(0))
            .optional()?;
        Ok(online.unwrap_or(false))
    }

    fn node_counts(&self) -> Result<NodeCounts, StateError> {
        let now = self.clock.now();
        let connection = self.lock();
        let registered: i64 = connection
            .prepare_cached("SELECT COUNT(*) FROM node")?
            .query_row([], |row| row.get(0))?;
        let online: i64 = connection
            .prepare_cached("SELECT COUNT(*) FROM node WHERE online_until > ?1")?
            .query_row([now], |row| row.get(0))?;
        Ok(NodeCounts {
            registered: usize::try_from(registered).unwrap_or(0),
            online: usize::try_from(online).unwrap_or(0),
        })
    }

    fn online_nodes(&self, run_id: u64) -> Result<Vec<u64>, StateError> {
        let now = self.clock.now();
        let connection = self.lock();
        if !run_exists(&connection, run_id)? {
            return Err(StateError::RunNotFound(run_id));
        }
        let mut statement = connection.prepare_cached(ONLINE_NODES)?;
        let rows = statement.query_map([now], |row| row.get::<_, i64>(0))?;
        let mut ids = rows
            .map(|id| id.map(id_from_sql))
            .collect::<Result<Vec<u64>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    fn create_run(
        &self,
        fab_id: &str,
        fab_version: &str,
        fab_hash: &str,
        override_config: HashMap<String, Scalar>,
        federation_options: ConfigsRecord,
        context: Option<Context>,
    ) -> Result<u64, StateError> {
        let pending_at = isoformat(self.clock.now());
        let override_blob = Run {
            override_config,
            ..Run::default()
        }
        .encode_to_vec();
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let run_id = fresh_id(|id| run_exists(&tx, id))?;
        tx.prepare_cached(
            "INSERT INTO run (run_id, fab_id, fab_version, fab_hash, override_config, \
             pending_at, status, federation_options) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            sql_id(run_id),
            fab_id,
            fab_version,
            fab_hash,
            override_blob,
            pending_at,
            pending_status().status,
            federation_options.encode_to_vec(),
        ])?;
        if let Some(context) = context {
            let context = Context { run_id, ..context };
            tx.prepare_cached("INSERT OR REPLACE INTO context (run_id, context) VALUES (?1, ?2)")?
                .execute(params![sql_id(run_id), context.encode_to_vec()])?;
        }
        tx.commit()?;
        Ok(run_id)
    }

    fn run(&self, run_id: u64) -> Result<Option<Run>, StateError> {
        load_run(&self.lock(), run_id)
    }

    fn runs(&self) -> Result<Vec<Run>, StateError> {
        let connection = self.lock();
        let sql = format!("SELECT {RUN_COLUMNS} FROM run ORDER BY seq");
        let mut statement = connection.prepare_cached(&sql)?;
        let rows = statement
            .query_map([], run_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    fn pending_run_id(&self) -> Result<Option<u64>, StateError> {
        let connection = self.lock();
        let id: Option<i64> = connection
            .prepare_cached("SELECT run_id FROM run WHERE status = ?1 ORDER BY seq LIMIT 1")?
            .query_row([PENDING], |row| row.get(0))
            .optional()?;
        Ok(id.map(id_from_sql))
    }

    fn update_run_status(&self, run_id: u64, new_status: RunStatus) -> Result<bool, StateError> {
        let now_iso = isoformat(self.clock.now());
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let mut run = load_run(&tx, run_id)?.ok_or(StateError::RunNotFound(run_id))?;
        if !transition(&mut run, new_status, &now_iso) {
            return Ok(false);
        }
        let status = run.status.unwrap_or_default();
        tx.prepare_cached(
            "UPDATE run SET starting_at = ?1, running_at = ?2, finished_at = ?3, status = ?4, \
             sub_status = ?5, details = ?6 WHERE run_id = ?7",
        )?
        .execute(params![
            run.starting_at,
            run.running_at,
            run.finished_at,
            status.status,
            status.sub_status,
            status.details,
            sql_id(run_id),
        ])?;
        tx.commit()?;
        Ok(true)
    }

    fn federation_options(&self, run_id: u64) -> Result<Option<ConfigsRecord>, StateError> {
        let connection = self.lock();
        let blob: Option<Vec<u8>> = connection
            .prepare_cached("SELECT federation_options FROM run WHERE run_id = ?1")?
            .query_row([sql_id(run_id)], |row| row.get(0))
            .optional()?;
        blob.map(|bytes| decode(&bytes)).transpose()
    }

    fn set_serverapp_context(&self, run_id: u64, context: Context) -> Result<(), StateError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        if !run_exists(&tx, run_id)? {
            return Err(StateError::RunNotFound(run_id));
        }
        tx.prepare_cached("INSERT OR REPLACE INTO context (run_id, context) VALUES (?1, ?2)")?
            .execute(params![sql_id(run_id), context.encode_to_vec()])?;
        tx.commit()?;
        Ok(())
    }

    fn serverapp_context(&self, run_id: u64) -> Result<Option<Context>, StateError> {
        let connection = self.lock();
        let blob: Option<Vec<u8>> = connection
            .prepare_cached("SELECT context FROM context WHERE run_id = ?1")?
            .query_row([sql_id(run_id)], |row| row.get(0))
            .optional()?;
        blob.map(|bytes| decode(&bytes)).transpose()
    }

    fn add_serverapp_log(&self, run_id: u64, log: &str) -> Result<(), StateError> {
        let now = self.clock.now();
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        if !run_exists(&tx, run_id)? {
            return Err(StateError::RunNotFound(run_id));
        }
        tx.prepare_cached("INSERT INTO logs (run_id, timestamp, log) VALUES (?1, ?2, ?3)")?
            .execute(params![sql_id(run_id), now, log])?;
        tx.commit()?;
        Ok(())
    }

    fn serverapp_logs_after(
        &self,
        run_id: u64,
        after_timestamp: f64,
    ) -> Result<(String, f64), StateError> {
        let connection = self.lock();
        if !run_exists(&connection, run_id)? {
            return Err(StateError::RunNotFound(run_id));
        }
        let mut statement = connection.prepare_cached(
            "SELECT timestamp, log FROM logs WHERE run_id = ?1 AND timestamp > ?2 ORDER BY seq",
        )?;
        let rows = statement.query_map(
            params![sql_id(run_id), after_timestamp + LOG_TIMESTAMP_EPSILON],
            |row| Ok((row.get::<_, f64>(0)?, row.get::<_, String>(1)?)),
        )?;
        let mut text = String::new();
        let mut latest = 0.0;
        for row in rows {
            let (timestamp, chunk) = row?;
            text.push_str(&chunk);
            latest = timestamp;
        }
        Ok((text, latest))
    }
}

/// Up to `limit` queued (undelivered, not yet found expired) TaskIns of a consumer, oldest
/// first, as `(seq, blob)`.
fn queued_task_ins(
    tx: &Transaction<'_>,
    node_id: Option<u64>,
    limit: usize,
) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let row = |row: &Row<'_>| Ok((row.get(0)?, row.get(1)?));
    let rows = match node_id {
        Some(node_id) => tx
            .prepare_cached(NAMED_QUEUE)?
            .query_map(params![sql_id(node_id), limit], row)?
            .collect::<Result<_, _>>()?,
        None => tx
            .prepare_cached(ANONYMOUS_QUEUE)?
            .query_map([limit], row)?
            .collect::<Result<_, _>>()?,
    };
    Ok(rows)
}

/// Creates a missing database file with mode 0600 before SQLite opens it: SQLite would create
/// it 0644 (minus the umask), readable by every local user although it holds node public keys,
/// tasks and results. SQLite gives its journal and WAL files the database file's mode. Names
/// SQLite treats specially (`:memory:`, `file:` URIs, the empty name) are left to SQLite, and so
/// is any failure here: opening then reports it.
fn create_private(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt as _;

    let name = path.as_os_str();
    if name.is_empty() || name == ":memory:" || path.to_string_lossy().starts_with("file:") {
        return;
    }
    // `create_new`: an existing file (or symlink) is not touched, its mode is the owner's call.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_database_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = SqliteLinkState::open(&path, Arc::new(crate::SystemClock)).unwrap();
        drop(state);
        for file in [path.clone(), dir.path().join("state.db-wal")] {
            if let Ok(metadata) = std::fs::metadata(&file) {
                assert_eq!(
                    metadata.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    file.display()
                );
            }
        }
        // An existing file keeps the mode its owner gave it.
        let shared = dir.path().join("shared.db");
        std::fs::write(&shared, b"").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
        drop(SqliteLinkState::open(&shared, Arc::new(crate::SystemClock)).unwrap());
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn ids_keep_their_bit_pattern() {
        for id in [0, 1, i64::MAX as u64, 1 << 63, u64::MAX] {
            assert_eq!(id_from_sql(sql_id(id)), id);
        }
        assert_eq!(sql_id(u64::MAX), -1);
    }

    #[test]
    fn migrations_are_idempotent() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        migrate(&mut connection).unwrap();
        // Re-running the scripts themselves is harmless too (`IF NOT EXISTS` everywhere).
        for (_, sql) in MIGRATIONS {
            connection.execute_batch(sql).unwrap();
        }
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.last().unwrap().0);
    }

    /// The query plan of `sql`, one detail line per step.
    fn plan(connection: &Connection, sql: &str) -> Vec<String> {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let nulls = vec![rusqlite::types::Null; statement.parameter_count()];
        let rows = statement
            .query_map(rusqlite::params_from_iter(nulls), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn hot_statements_use_indexes() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        let hot = [
            (NAMED_QUEUE, "idx_task_ins_queue"),
            (ANONYMOUS_QUEUE, "idx_task_ins_queue"),
            (DELIVER, "INTEGER PRIMARY KEY"),
            (DROP_EXPIRED, "INTEGER PRIMARY KEY"),
            (PING, "INTEGER PRIMARY KEY"),
            (NODE_ONLINE, "INTEGER PRIMARY KEY"),
            (NODE_EXISTS, "INTEGER PRIMARY KEY"),
            (NODE_OF_KEY, "sqlite_autoindex_node"),
            (ONLINE_NODES, "idx_online_until"),
        ];
        for (sql, index) in hot {
            let steps = plan(&connection, sql);
            assert!(
                steps.iter().any(|step| step.contains(index)),
                "{sql}: {steps:?}"
            );
            // A full scan reads "SCAN <table>"; a sort would be a "USE TEMP B-TREE" step.
            assert!(
                steps
                    .iter()
                    .all(|step| !step.starts_with("SCAN") && !step.contains("TEMP B-TREE")),
                "{sql}: {steps:?}"
            );
        }
    }
}
