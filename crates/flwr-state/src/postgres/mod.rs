//! [`PostgresLinkState`]: a [`LinkState`] in a PostgreSQL database that several SuperLink
//! replicas share at the same time.
//!
//! # Threads
//!
//! The trait is synchronous and [`blocks`](LinkState::blocks), so the SuperLink calls it from
//! `tokio::task::spawn_blocking` (tests call it from plain threads). The store owns a small
//! multi-thread tokio runtime (threads named `flwr-postgres`) that drives its connections;
//! each call runs `Runtime::block_on` on the calling thread. That is fine on blocking-pool and
//! plain threads, but **panics on an async worker thread** (tokio refuses to block a worker):
//! never call the store inline from async code. Dropping the store is safe anywhere: its
//! runtime is shut down in the background.
//!
//! # Several processes
//!
//! Transactions run at READ COMMITTED and every race between replicas is settled by the
//! database's row locks or conflict clauses rather than by SERIALIZABLE, which would abort
//! and retry whole transactions under the contention a shared delivery queue has (and a retry
//! loop around every call would hide bugs as latency):
//!
//! - a pull takes its TaskIns with `FOR UPDATE SKIP LOCKED` and marks them delivered in the
//!   same statement, so each TaskIns is delivered exactly once however many replicas pull;
//! - a status update locks its run row (`FOR UPDATE`), so pending → starting is won once;
//! - `create_node`/`create_run` insert random ids with `ON CONFLICT DO NOTHING` and draw again
//!   on a conflict; the UNIQUE public key turns a concurrent second registration of one key
//!   into [`StateError::PublicKeyInUse`];
//! - launch leases are claimed and taken over with `FOR UPDATE SKIP LOCKED` on the run rows;
//! - a TaskRes references its TaskIns (`ON DELETE CASCADE`), so no replica can leave a reply
//!   behind its deleted instruction.
//!
//! Lock waits can still meet in a deadlock (say, a `PullTaskRes` and a `StopRun` of the same
//! run); PostgreSQL aborts one of them, and a call whose transaction was aborted for a deadlock
//! or a serialization failure is retried a few times, since nothing of it was applied.
//!
//! Writers also `NOTIFY` the channel `flwr_changes` (delivered at commit), and
//! [`watch`](LinkState::watch) listens on it, so a held pull on one replica wakes up when a
//! TaskIns or TaskRes arrives through another.
//!
//! # Storage
//!
//! The tables mirror the SQLite store (`migrations/postgres/`). u64 ids are stored as the
//! `bigint` with the same bit pattern (PostgreSQL has no unsigned integers), so ids above
//! `i64::MAX` read back negative in `psql` but round-trip exactly. TaskIns and TaskRes are
//! stored as protobuf `bytea`. "Now" is always the injected [`Clock`]'s, passed as a
//! parameter, never the database server's `now()`.
//!
//! # Security
//!
//! Connections are not encrypted (`NoTls`): put the database on loopback, a private network
//! or behind an SSH/VPN tunnel. TLS to PostgreSQL is future work. The password in the URL is
//! never logged nor put in an error message; a URL without one takes `PGPASSWORD` (libpq's
//! convention), which keeps it off the command line.

mod listen;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod,
};
use flwr_proto::{ConfigsRecord, Context, Run, RunStatus, Scalar, TaskIns, TaskRes};
use prost::Message;
use tokio::runtime::Runtime;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Config, IsolationLevel, NoTls, Row};

use crate::lifecycle::{pending_status, transition};
use crate::link_state::{
    Change, ChangeSink, FabStore, NodeCounts, TaskCounts, LOG_TIMESTAMP_EPSILON,
};
use crate::task::{
    accept_task_res, distinct_task_ids, expired_for_delivery, expired_for_results,
    message_unavailable_reply, parse_task_id, reply_fits_instruction, reply_unavailable_reply,
    store_task_ins_batch, PushTaskInsError, TaskInsDropped,
};
use crate::{isoformat, Clock, LinkState, StateError, ID_ATTEMPTS};

use listen::payload;

/// Schema migrations, applied in order; the `flwr_schema` table records the last one applied.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/postgres/0001_init.sql"))];

/// The advisory lock that serialises migrations of replicas starting at the same time
/// (the bytes of "flwrschm").
const SCHEMA_LOCK: i64 = 0x666c_7772_7363_686d;

/// Worker threads of the store's runtime: they only shuttle bytes between sockets.
const WORKER_THREADS: usize = 2;

/// Connections per store. Calls beyond it wait (up to [`POOL_WAIT`]) for a free one.
const POOL_SIZE: usize = 8;

/// How long a call waits for a free pooled connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How long opening a connection may take, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// tokio-postgres's TCP keepalive idle time when the URL sets none (2 h).
const DRIVER_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// TCP keepalive idle time we use instead, so a listener on a dead server notices in minutes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Retries of a call whose transaction the server aborted (deadlock, serialization failure).
const TRANSIENT_RETRIES: u32 = 5;

/// Pause before the first retry; grows linearly.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// `application_name` of our sessions (visible in `pg_stat_activity`), unless the URL sets one.
const APPLICATION_NAME: &str = "flwr-superlink";

/// Columns of `run`, in the order [`RunRow::read`] reads them.
const RUN_COLUMNS: &str = "run_id, fab_id, fab_version, fab_hash, override_config, pending_at, \
     starting_at, running_at, finished_at, status, sub_status, details";

/// Takes up to `$3` deliverable TaskIns of a consumer out of the queue, oldest first, and
/// sweeps the expired ones (they can never be delivered: time only moves forward) out of it,
/// all in one statement. Rows another transaction is taking right now are skipped, so no
/// TaskIns is delivered twice however many replicas pull, and no pull waits for another.
const TAKE_QUEUED: &str = "WITH swept AS (\
         UPDATE task_ins SET delivered = true WHERE seq IN (\
             SELECT seq FROM task_ins \
             WHERE NOT delivered AND consumer_anonymous = $1 AND consumer_node_id = $2 \
               AND expires_at <= $4 \
             FOR UPDATE SKIP LOCKED)), \
     queued AS (\
         SELECT seq FROM task_ins \
         WHERE NOT delivered AND consumer_anonymous = $1 AND consumer_node_id = $2 \
           AND expires_at > $4 \
         ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE task_ins SET delivered = true FROM queued WHERE task_ins.seq = queued.seq \
     RETURNING task_ins.seq, task_ins.task_ins";

/// Stores a TaskIns if its run exists and its named consumer is registered, and notifies.
const STORE_TASK_INS: &str = "WITH stored AS (\
         INSERT INTO task_ins (task_id, run_id, consumer_anonymous, consumer_node_id, \
             expires_at, task_ins) \
         SELECT $1::text, $2::bigint, $3::boolean, $4::bigint, $7::double precision, $5::bytea \
         WHERE EXISTS (SELECT 1 FROM run WHERE run_id = $2) \
           AND ($3 OR EXISTS (SELECT 1 FROM node WHERE node_id = $4)) \
         RETURNING 1) \
     SELECT pg_notify('flwr_changes', $6) FROM stored";

/// Stores (or replaces) the reply to a TaskIns if its run exists, and notifies.
const STORE_TASK_RES: &str = "WITH stored AS (\
         INSERT INTO task_res (task_id, ins_id, run_id, task_res) \
         SELECT $1::text, $2::text, $3::bigint, $4::bytea \
         WHERE EXISTS (SELECT 1 FROM run WHERE run_id = $3) \
         ON CONFLICT (ins_id) DO UPDATE SET task_id = EXCLUDED.task_id, \
             run_id = EXCLUDED.run_id, task_res = EXCLUDED.task_res \
         RETURNING 1) \
     SELECT pg_notify('flwr_changes', $5) FROM stored";

/// Registers a node unless its id or key is taken.
const INSERT_NODE: &str = "INSERT INTO node (node_id, online_until, ping_interval, public_key) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING node_id";

/// The node bound to a public key; served by the column's UNIQUE index.
const NODE_OF_KEY: &str = "SELECT node_id FROM node WHERE public_key = $1";

/// Liveness refresh (Ping).
const PING: &str = "UPDATE node SET online_until = $1, ping_interval = $2 WHERE node_id = $3";

/// Whether one node is online; no row for an unknown node.
const NODE_ONLINE: &str = "SELECT online_until > $2 FROM node WHERE node_id = $1";

/// Ids of online nodes; served by `idx_online_until`.
const ONLINE_NODES: &str = "SELECT node_id FROM node WHERE online_until > $1";

/// Whether a run exists.
const RUN_EXISTS: &str = "SELECT 1 FROM run WHERE run_id = $1";

/// Creates a run unless its id is taken, and notifies the launchers.
const INSERT_RUN: &str = "WITH created AS (\
         INSERT INTO run (run_id, fab_id, fab_version, fab_hash, override_config, pending_at, \
             status, federation_options) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id) DO NOTHING \
         RETURNING 1) \
     SELECT pg_notify('flwr_changes', 'p') FROM created";

/// Stores (replaces) a run's context; the run's existence is the caller's to check.
const UPSERT_CONTEXT: &str = "INSERT INTO context (run_id, context) VALUES ($1, $2) \
     ON CONFLICT (run_id) DO UPDATE SET context = EXCLUDED.context";

/// The oldest pending run nobody else claimed. `'pending'` is spelled out (not a parameter)
/// so that generic plans still match the partial index `idx_run_pending`.
const PENDING_RUN: &str = "SELECT run_id FROM run \
     WHERE status = 'pending' AND (lease_owner IS NULL OR lease_owner = $1) \
     ORDER BY seq LIMIT 1";

/// Claims the oldest pending run that is unclaimed, ours, or whose claim expired.
const CLAIM_RUN: &str = "UPDATE run SET lease_owner = $1, lease_until = $2 WHERE seq = (\
         SELECT seq FROM run \
         WHERE status = 'pending' \
           AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until <= $3) \
         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING run_id";

/// Extends this replica's leases on unfinished runs.
const RENEW_LEASES: &str = "UPDATE run SET lease_until = $1 \
     WHERE run_id = ANY($2) AND lease_owner = $3 AND status <> 'finished'";

/// Resets every unfinished run whose lease expired to pending and leases it to us.
const TAKE_OVER: &str = "WITH orphans AS (\
         SELECT seq FROM run \
         WHERE lease_owner IS NOT NULL AND status <> 'finished' AND lease_until <= $1 \
         FOR UPDATE SKIP LOCKED) \
     UPDATE run SET status = 'pending', sub_status = '', details = '', starting_at = '', \
         running_at = '', lease_owner = $2, lease_until = $3 \
     FROM orphans WHERE run.seq = orphans.seq \
     RETURNING run.run_id";

/// Whether `url` names a PostgreSQL database (`postgresql://…` or `postgres://…`), as opposed
/// to a SQLite path; for the command line.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgresql://") || url.starts_with("postgres://")
}

/// A [`LinkState`] in a PostgreSQL database, shared by every SuperLink replica that connects
/// to it (see the [module docs](self) for threads, concurrency and security).
///
/// Each instance has its own [replica id](Self::replica_id), the owner of the launch leases it
/// takes. It also implements [`FabStore`], so every replica can serve every FAB.
pub struct PostgresLinkState {
    clock: Arc<dyn Clock>,
    pool: Pool,
    /// For the dedicated `LISTEN` connections of [`LinkState::watch`].
    config: Config,
    /// `user@host:port/dbname`, for error messages (never the password).
    target: String,
    replica_id: String,
    /// Always `Some` until drop takes it out to shut it down without blocking.
    runtime: Option<Runtime>,
}

impl fmt::Debug for PostgresLinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLinkState")
            .field("target", &self.target)
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresLinkState {
    fn drop(&mut self) {
        // A runtime dropped on an async worker would panic while waiting for its tasks;
        // `shutdown_background` does not wait. Connections just close.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PostgresLinkState {
    /// Connects to the database at `url` (`postgresql://user:password@host:port/dbname`, or
    /// `postgres://…`; libpq's query parameters such as `connect_timeout` are understood) and
    /// applies pending schema migrations. Replicas may connect at the same time.
    ///
    /// # Errors
    ///
    /// [`StateError::Postgres`] if the URL is malformed or the database cannot be reached or
    /// migrated; the message names user, host, port and database, never the password.
    /// [`StateError::UnsupportedSchema`] if a newer build migrated the database.
    pub fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        let secrets = Secrets::of(url);
        let mut config: Config = url.parse().map_err(|err: tokio_postgres::Error| {
            StateError::Postgres(secrets.redact(&format!(
                "invalid PostgreSQL URL (expected postgresql://user:password@host:port/dbname): \
                 {}",
                chain(&err)
            )))
        })?;
        // As libpq: a URL without a password takes PGPASSWORD, so that the password need not
        // be on a command line, where every local user can read it.
        if config.get_password().is_none() {
            if let Some(password) = std::env::var_os("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        if config.get_keepalives_idle() == DRIVER_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        let target = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("flwr-postgres")
            .enable_all()
            .build()
            .map_err(|err| StateError::Postgres(format!("starting the store's runtime: {err}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A closed connection is noticed for free; a broken one fails its next call
                // once and is then discarded, which beats a round trip on every checkout.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(5)))
            .build()
            .map_err(|err| StateError::Postgres(format!("building the connection pool: {err}")))?;
        let state = Self {
            clock,
            pool,
            config,
            target,
            replica_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            runtime: Some(runtime),
        };
        state
            .block_on(async {
                let mut client = state.client().await?;
                migrate(&mut client).await
            })
            .map_err(|err| match err {
                StateError::Postgres(message) => StateError::Postgres(secrets.redact(&message)),
                other => other,
            })?;
        Ok(state)
    }

    /// This instance's replica id (a UUID4), the owner recorded on the launch leases it takes.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Runs `work` on the store's runtime, blocking the calling thread.
    fn block_on<T>(&self, work: impl Future<Output = Result<T, Failure>>) -> Result<T, StateError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StateError::Postgres("the store is shut down".to_owned()))?;
        runtime.block_on(work).map_err(Failure::into_state)
    }

    /// Runs one call's transaction, again when the server aborted it for a deadlock or a
    /// serialization failure (nothing of an aborted transaction was applied).
    fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T, StateError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.block_on(async {
            let mut retries = 0;
            loop {
                match attempt().await {
                    Err(Failure::Db(err)) if retries < TRANSIENT_RETRIES && transient(&err) => {
                        retries += 1;
                        tokio::time::sleep(RETRY_PAUSE * retries).await;
                    }
                    done => return done,
                }
            }
        })
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, Failure> {
        self.pool.get().await.map_err(|err| {
            let reason = match err {
                PoolError::Backend(err) => chain(&err),
                PoolError::Timeout(_) => format!(
                    "no connection within {}s (all {POOL_SIZE} busy, or the server does not \
                     answer)",
                    POOL_WAIT.as_secs()
                ),
                other => other.to_string(),
            };
            Failure::Pool(format!("cannot use {}: {reason}", self.target))
        })
    }

    /// Now + `lease`, in unix seconds.
    fn lease_until(&self, lease: Duration) -> f64 {
        self.clock.now() + lease.as_secs_f64()
    }

    async fn task_ins_for_node_once(
        &self,
        node_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskIns>, Failure> {
        let now = self.clock.now();
        let (anonymous, consumer) = match node_id {
            Some(node_id) => (false, sql_id(node_id)),
            None => (true, 0),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let mut taken = rows(&client, TAKE_QUEUED, &[&anonymous, &consumer, &limit, &now])
            .await?
            .iter()
            .map(|row| Ok((get::<i64>(row, 0)?, get::<Vec<u8>>(row, 1)?)))
            .collect::<Result<Vec<_>, Failure>>()?;
        taken.sort_unstable_by_key(|(seq, _)| *seq);
        let delivered_at = isoformat(now);
        let mut out = Vec::with_capacity(taken.len());
        for (_, blob) in taken {
            let mut task_ins: TaskIns = decode_task(blob)?;
            // `expires_at` is `created_at + ttl` as Rust computed it, so the database already
            // applied this very test; it stays as the rule's statement.
            let Some(task) = task_ins
                .task
                .as_mut()
                .filter(|task| !expired_for_delivery(task, now))
            else {
                continue;
            };
            // Only the returned copy is stamped: nothing reads a stored TaskIns's
            // `delivered_at`, and rewriting a large payload per delivery is not free.
            delivered_at.clone_into(&mut task.delivered_at);
            out.push(task_ins);
        }
        Ok(out)
    }

    async fn store_task_res_once(
        &self,
        task_res: &TaskRes,
        ins_id: &str,
        now: f64,
    ) -> Result<Option<String>, Failure> {
        let client = self.client().await?;
        let Some(row) = opt_row(
            &client,
            "SELECT task_ins FROM task_ins WHERE task_id = $1",
            &[&ins_id],
        )
        .await?
        else {
            return Ok(None);
        };
        let task_ins: TaskIns = decode_task(get::<Vec<u8>>(&row, 0)?)?;
        if !reply_fits_instruction(&task_ins, task_res, now) {
            return Ok(None);
        }
        let task_id = crate::task::new_task_id();
        let mut task_res = task_res.clone();
        task_res.task_id.clone_from(&task_id);
        let notice = payload(Change::Run(task_res.run_id));
        let stored = rows(
            &client,
            STORE_TASK_RES,
            &[
                &task_id,
                &ins_id,
                &sql_id(task_res.run_id),
                &task_res.encode_to_vec(),
                &notice,
            ],
        )
        .await;
        match stored {
            Ok(rows) if rows.is_empty() => Ok(None),
            Ok(_) => Ok(Some(task_id)),
            // The TaskIns was deleted (pulled, stopped) since it was read: as if unknown.
            Err(Failure::Db(err)) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    async fn task_res_once(&self, ids: &[String]) -> Result<Vec<TaskRes>, Failure> {
        let now = self.clock.now();
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        // Locked in id order, so two pulls of overlapping ids cannot deadlock each other.
        let instructions = rows(
            &tx,
            "SELECT task_id, task_ins FROM task_ins WHERE task_id = ANY($1) \
             ORDER BY task_id FOR UPDATE",
            &[&ids],
        )
        .await?
        .iter()
        .map(|row| Ok((get::<String>(row, 0)?, get::<Vec<u8>>(row, 1)?)))
        .collect::<Result<HashMap<_, _>, Failure>>()?;
        let mut replies = rows(
            &tx,
            "SELECT ins_id, task_res FROM task_res WHERE ins_id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|row| Ok((get::<String>(row, 0)?, get::<Vec<u8>>(row, 1)?)))
        .collect::<Result<HashMap<_, _>, Failure>>()?;
        let mut out = Vec::new();
        let mut answered: Vec<&str> = Vec::new();
        for id in ids {
            let task_ins = instructions
                .get(id)
                .map(|blob| decode::<TaskIns>(blob))
                .transpose()?;
            let Some(task_ins) = task_ins.filter(|ins| {
                ins.task
                    .as_ref()
                    .is_some_and(|task| !expired_for_results(task, now))
            }) else {
                out.push(message_unavailable_reply(id, now));
                answered.push(id);
                continue;
            };
            let Some(blob) = replies.remove(id) else {
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
            answered.push(id);
        }
        if !answered.is_empty() {
            // Deleting the TaskIns deletes its reply (ON DELETE CASCADE).
            execute(
                &tx,
                "DELETE FROM task_ins WHERE task_id = ANY($1)",
                &[&answered],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn delete_tasks_of_run_once(&self, run_id: u64) -> Result<(), Failure> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let id = sql_id(run_id);
        execute(&tx, "DELETE FROM task_res WHERE run_id = $1", &[&id]).await?;
        execute(&tx, "DELETE FROM task_ins WHERE run_id = $1", &[&id]).await?;
        notify(&tx, Change::Run(run_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_node_once(
        &self,
        ping_interval: f64,
        public_key: Option<&[u8]>,
    ) -> Result<u64, Failure> {
        let now = self.clock.now();
        let client = self.client().await?;
        for _ in 0..ID_ATTEMPTS {
            let node_id = crate::fresh_id(|_| Ok(false))?;
            let inserted = rows(
                &client,
                INSERT_NODE,
                &[
                    &sql_id(node_id),
                    &(now + ping_interval),
                    &ping_interval,
                    &public_key,
                ],
            )
            .await?;
            if !inserted.is_empty() {
                return Ok(node_id);
            }
            // The id or the key was taken (perhaps by another replica just now): which one?
            if let Some(key) = public_key {
                if let Some(row) = opt_row(&client, NODE_OF_KEY, &[&key]).await? {
                    let existing = id_from_sql(get(&row, 0)?);
                    return Err(StateError::PublicKeyInUse(existing).into());
                }
            }
        }
        Err(StateError::IdSpaceExhausted.into())
    }

    async fn create_run_once(
        &self,
        fab: [&str; 3],
        override_blob: &[u8],
        federation_blob: &[u8],
        context: Option<&Context>,
    ) -> Result<u64, Failure> {
        let pending_at = isoformat(self.clock.now());
        let status = pending_status().status;
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let [fab_id, fab_version, fab_hash] = fab;
        let mut created = None;
        for _ in 0..ID_ATTEMPTS {
            let run_id = crate::fresh_id(|_| Ok(false))?;
            let inserted = rows(
                &tx,
                INSERT_RUN,
                &[
                    &sql_id(run_id),
                    &fab_id,
                    &fab_version,
                    &fab_hash,
                    &override_blob,
                    &pending_at,
                    &status,
                    &federation_blob,
                ],
            )
            .await?;
            if !inserted.is_empty() {
                created = Some(run_id);
                break;
            }
        }
        let run_id = created.ok_or(StateError::IdSpaceExhausted)?;
        if let Some(context) = context {
            let context = Context {
                run_id,
                ..context.clone()
            };
            execute(
                &tx,
                UPSERT_CONTEXT,
                &[&sql_id(run_id), &context.encode_to_vec()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(run_id)
    }

    async fn take_over_orphans_once(&self, lease: Duration) -> Result<Vec<u64>, Failure> {
        let now = self.clock.now();
        let until = self.lease_until(lease);
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let ids = rows(&tx, TAKE_OVER, &[&now, &self.replica_id, &until])
            .await?
            .iter()
            .map(|row| get::<i64>(row, 0))
            .collect::<Result<Vec<i64>, Failure>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Their ServerApps start again from the beginning: nothing of the old attempt stays.
        execute(&tx, "DELETE FROM task_res WHERE run_id = ANY($1)", &[&ids]).await?;
        execute(&tx, "DELETE FROM task_ins WHERE run_id = ANY($1)", &[&ids]).await?;
        let mut taken: Vec<u64> = ids.into_iter().map(id_from_sql).collect();
        taken.sort_unstable();
        for &run_id in &taken {
            notify(&tx, Change::Run(run_id)).await?;
        }
        notify(&tx, Change::RunPending).await?;
        tx.commit().await?;
        Ok(taken)
    }

    async fn update_run_status_once(
        &self,
        run_id: u64,
        new_status: &RunStatus,
    ) -> Result<bool, Failure> {
        let now_iso = isoformat(self.clock.now());
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        // The row lock makes a concurrent update (pending -> starting on another replica) wait
        // and then see this one's result.
        let sql = format!("SELECT {RUN_COLUMNS} FROM run WHERE run_id = $1 FOR UPDATE");
        let row = opt_row(&tx, &sql, &[&sql_id(run_id)])
            .await?
            .ok_or(StateError::RunNotFound(run_id))?;
        let mut run = RunRow::read(&row)?.into_run()?;
        if !transition(&mut run, new_status.clone(), &now_iso) {
            return Ok(false);
        }
        let status = run.status.unwrap_or_default();
        execute(
            &tx,
            "UPDATE run SET starting_at = $1, running_at = $2, finished_at = $3, status = $4, \
             sub_status = $5, details = $6 WHERE run_id = $7",
            &[
                &run.starting_at,
                &run.running_at,
                &run.finished_at,
                &status.status,
                &status.sub_status,
                &status.details,
                &sql_id(run_id),
            ],
        )
        .await?;
        notify(&tx, Change::Run(run_id)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn logs_after_once(
        &self,
        run_id: u64,
        after_timestamp: f64,
    ) -> Result<(String, f64), Failure> {
        let client = self.client().await?;
        let id = sql_id(run_id);
        if opt_row(&client, RUN_EXISTS, &[&id]).await?.is_none() {
            return Err(StateError::RunNotFound(run_id).into());
        }
        let chunks = rows(
            &client,
            "SELECT timestamp, log FROM logs WHERE run_id = $1 AND timestamp > $2 ORDER BY seq",
            &[&id, &(after_timestamp + LOG_TIMESTAMP_EPSILON)],
        )
        .await?;
        let mut text = String::new();
        let mut latest = 0.0;
        for row in &chunks {
            latest = get::<f64>(row, 0)?;
            text.push_str(&get::<String>(row, 1)?);
        }
        Ok((text, latest))
    }
}

impl PostgresLinkState {
    /// Stores one accepted TaskIns ([`store_task_ins_batch`] validated it); `None` when its run
    /// or named consumer is unknown.
    fn insert_task_ins(&self, mut task_ins: TaskIns) -> Result<Option<String>, StateError> {
        let Some(consumer) = task_ins.task.as_ref().and_then(|task| task.consumer) else {
            return Ok(None);
        };
        let task_id = crate::task::new_task_id();
        task_ins.task_id.clone_from(&task_id);
        let blob = task_ins.encode_to_vec();
        // The same sum `expired_for_delivery` computes, so the queue's test in SQL agrees.
        let expires_at = task_ins
            .task
            .as_ref()
            .map_or(0.0, |task| task.created_at + task.ttl);
        let notice = payload(Change::NodeTasks(
            (!consumer.anonymous).then_some(consumer.node_id),
        ));
        let run_id = sql_id(task_ins.run_id);
        let node_id = sql_id(consumer.node_id);
        let stored = self.call(|| async {
            let client = self.client().await?;
            rows(
                &client,
                STORE_TASK_INS,
                &[
                    &task_id,
                    &run_id,
                    &consumer.anonymous,
                    &node_id,
                    &blob,
                    &notice,
                    &expires_at,
                ],
            )
            .await
        })?;
        Ok((!stored.is_empty()).then_some(task_id))
    }
}

impl LinkState for PostgresLinkState {
    fn shared(&self) -> bool {
        true
    }

    fn watch(&self, sink: ChangeSink) -> Result<(), StateError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StateError::Postgres("the store is shut down".to_owned()))?;
        // The first subscription is made before returning, so every change committed after
        // `watch` returns is heard; each call gets its own listening connection.
        let first = runtime
            .block_on(listen::subscribe(&self.config, sink.clone()))
            .map_err(|err| {
                StateError::Postgres(format!("cannot listen on {}: {}", self.target, chain(&err)))
            })?;
        runtime.spawn(listen::keep_listening(self.config.clone(), sink, first));
        Ok(())
    }

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
        self.call(|| self.task_ins_for_node_once(node_id, limit))
    }

    fn store_task_res(&self, mut task_res: TaskRes) -> Result<Option<String>, StateError> {
        let now = self.clock.now();
        let Some(ins_id) = accept_task_res(&mut task_res, now)? else {
            return Ok(None);
        };
        let ins_id = ins_id.hyphenated().to_string();
        self.call(|| self.store_task_res_once(&task_res, &ins_id, now))
    }

    fn task_res(&self, task_ids: &[String]) -> Result<Vec<TaskRes>, StateError> {
        let ids: Vec<String> = distinct_task_ids(task_ids)?
            .into_iter()
            .map(|id| id.hyphenated().to_string())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|| self.task_res_once(&ids))
    }

    fn replies_pending(&self, task_ids: &[String]) -> Result<usize, StateError> {
        let ids: Vec<String> = task_ids
            .iter()
            .filter_map(|text| parse_task_id(text).ok())
            .map(|id| id.hyphenated().to_string())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let count: i64 = self.call(|| async {
            let client = self.client().await?;
            let row = one_row(
                &client,
                "SELECT count(*) FROM unnest($1::text[]) AS wanted(id) \
                 WHERE EXISTS (SELECT 1 FROM task_ins WHERE task_id = wanted.id) \
                   AND NOT EXISTS (SELECT 1 FROM task_res WHERE ins_id = wanted.id)",
                &[&ids],
            )
            .await?;
            get(&row, 0)
        })?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    fn delete_tasks_of_run(&self, run_id: u64) -> Result<(), StateError> {
        self.call(|| self.delete_tasks_of_run_once(run_id))
    }

    fn task_counts(&self) -> Result<TaskCounts, StateError> {
        let (task_ins, task_res): (i64, i64) = self.call(|| async {
            let client = self.client().await?;
            let row = one_row(
                &client,
                "SELECT (SELECT count(*) FROM task_ins), (SELECT count(*) FROM task_res)",
                &[],
            )
            .await?;
            Ok((get(&row, 0)?, get(&row, 1)?))
        })?;
        Ok(TaskCounts {
            task_ins: usize::try_from(task_ins).unwrap_or(0),
            task_res: usize::try_from(task_res).unwrap_or(0),
        })
    }

    fn create_node(
        &self,
        ping_interval: f64,
        public_key: Option<&[u8]>,
    ) -> Result<u64, StateError> {
        self.call(|| self.create_node_once(ping_interval, public_key))
    }

    fn delete_node(&self, node_id: u64) -> Result<(), StateError> {
        let notice = payload(Change::NodeTasks(Some(node_id)));
        let deleted = self.call(|| async {
            let client = self.client().await?;
            rows(
                &client,
                "WITH gone AS (DELETE FROM node WHERE node_id = $1 RETURNING 1) \
                 SELECT pg_notify('flwr_changes', $2) FROM gone",
                &[&sql_id(node_id), &notice],
            )
            .await
        })?;
        if deleted.is_empty() {
            return Err(StateError::NodeNotFound(node_id));
        }
        Ok(())
    }

    fn node_id_for_public_key(&self, public_key: &[u8]) -> Result<Option<u64>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(&client, NODE_OF_KEY, &[&public_key]).await?;
            row.map(|row| get(&row, 0).map(id_from_sql)).transpose()
        })
    }

    fn acknowledge_ping(&self, node_id: u64, ping_interval: f64) -> Result<bool, StateError> {
        let now = self.clock.now();
        let updated = self.call(|| async {
            let client = self.client().await?;
            execute(
                &client,
                PING,
                &[&(now + ping_interval), &ping_interval, &sql_id(node_id)],
            )
            .await
        })?;
        Ok(updated > 0)
    }

    fn is_node_online(&self, node_id: u64) -> Result<bool, StateError> {
        let now = self.clock.now();
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(&client, NODE_ONLINE, &[&sql_id(node_id), &now]).await?;
            row.map_or(Ok(false), |row| get(&row, 0))
        })
    }

    fn node_counts(&self) -> Result<NodeCounts, StateError> {
        let now = self.clock.now();
        let (registered, online): (i64, i64) = self.call(|| async {
            let client = self.client().await?;
            let row = one_row(
                &client,
                "SELECT (SELECT count(*) FROM node), \
                        (SELECT count(*) FROM node WHERE online_until > $1)",
                &[&now],
            )
            .await?;
            Ok((get(&row, 0)?, get(&row, 1)?))
        })?;
        Ok(NodeCounts {
            registered: usize::try_from(registered).unwrap_or(0),
            online: usize::try_from(online).unwrap_or(0),
        })
    }

    fn online_nodes(&self, run_id: u64) -> Result<Vec<u64>, StateError> {
        let now = self.clock.now();
        let mut ids = self.call(|| async {
            let client = self.client().await?;
            if opt_row(&client, RUN_EXISTS, &[&sql_id(run_id)])
                .await?
                .is_none()
            {
                return Err(StateError::RunNotFound(run_id).into());
            }
            rows(&client, ONLINE_NODES, &[&now])
                .await?
                .iter()
                .map(|row| get(row, 0).map(id_from_sql))
                .collect::<Result<Vec<u64>, Failure>>()
        })?;
        // Ascending as u64, which the bigint order is not.
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
        let override_blob = Run {
            override_config,
            ..Run::default()
        }
        .encode_to_vec();
        let federation_blob = federation_options.encode_to_vec();
        self.call(|| {
            self.create_run_once(
                [fab_id, fab_version, fab_hash],
                &override_blob,
                &federation_blob,
                context.as_ref(),
            )
        })
    }

    fn run(&self, run_id: u64) -> Result<Option<Run>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let sql = format!("SELECT {RUN_COLUMNS} FROM run WHERE run_id = $1");
            let row = opt_row(&client, &sql, &[&sql_id(run_id)]).await?;
            row.map(|row| RunRow::read(&row)?.into_run()).transpose()
        })
    }

    fn runs(&self) -> Result<Vec<Run>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let sql = format!("SELECT {RUN_COLUMNS} FROM run ORDER BY seq");
            rows(&client, &sql, &[])
                .await?
                .iter()
                .map(|row| RunRow::read(row)?.into_run())
                .collect()
        })
    }

    fn pending_run_id(&self) -> Result<Option<u64>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(&client, PENDING_RUN, &[&self.replica_id]).await?;
            row.map(|row| get(&row, 0).map(id_from_sql)).transpose()
        })
    }

    fn claim_pending_run(&self, lease: Duration) -> Result<Option<u64>, StateError> {
        let now = self.clock.now();
        let until = self.lease_until(lease);
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(&client, CLAIM_RUN, &[&self.replica_id, &until, &now]).await?;
            row.map(|row| get(&row, 0).map(id_from_sql)).transpose()
        })
    }

    fn renew_leases(&self, run_ids: &[u64], lease: Duration) -> Result<(), StateError> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let until = self.lease_until(lease);
        let ids: Vec<i64> = run_ids.iter().copied().map(sql_id).collect();
        self.call(|| async {
            let client = self.client().await?;
            execute(&client, RENEW_LEASES, &[&until, &ids, &self.replica_id]).await
        })?;
        Ok(())
    }

    fn take_over_orphans(&self, lease: Duration) -> Result<Vec<u64>, StateError> {
        self.call(|| self.take_over_orphans_once(lease))
    }

    fn update_run_status(&self, run_id: u64, new_status: RunStatus) -> Result<bool, StateError> {
        self.call(|| self.update_run_status_once(run_id, &new_status))
    }

    fn federation_options(&self, run_id: u64) -> Result<Option<ConfigsRecord>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(
                &client,
                "SELECT federation_options FROM run WHERE run_id = $1",
                &[&sql_id(run_id)],
            )
            .await?;
            row.map(|row| decode(&get::<Vec<u8>>(&row, 0)?)).transpose()
        })
    }

    fn set_serverapp_context(&self, run_id: u64, context: Context) -> Result<(), StateError> {
        let blob = context.encode_to_vec();
        let stored = self.call(|| async {
            let client = self.client().await?;
            rows(
                &client,
                "INSERT INTO context (run_id, context) \
                 SELECT $1::bigint, $2::bytea WHERE EXISTS (SELECT 1 FROM run WHERE run_id = $1) \
                 ON CONFLICT (run_id) DO UPDATE SET context = EXCLUDED.context \
                 RETURNING 1",
                &[&sql_id(run_id), &blob],
            )
            .await
        })?;
        if stored.is_empty() {
            return Err(StateError::RunNotFound(run_id));
        }
        Ok(())
    }

    fn serverapp_context(&self, run_id: u64) -> Result<Option<Context>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(
                &client,
                "SELECT context FROM context WHERE run_id = $1",
                &[&sql_id(run_id)],
            )
            .await?;
            row.map(|row| decode(&get::<Vec<u8>>(&row, 0)?)).transpose()
        })
    }

    fn add_serverapp_log(&self, run_id: u64, log: &str) -> Result<(), StateError> {
        let now = self.clock.now();
        let stored = self.call(|| async {
            let client = self.client().await?;
            rows(
                &client,
                "INSERT INTO logs (run_id, timestamp, log) \
                 SELECT $1::bigint, $2::double precision, $3::text \
                 WHERE EXISTS (SELECT 1 FROM run WHERE run_id = $1) RETURNING 1",
                &[&sql_id(run_id), &now, &log],
            )
            .await
        })?;
        if stored.is_empty() {
            return Err(StateError::RunNotFound(run_id));
        }
        Ok(())
    }

    fn serverapp_logs_after(
        &self,
        run_id: u64,
        after_timestamp: f64,
    ) -> Result<(String, f64), StateError> {
        self.call(|| self.logs_after_once(run_id, after_timestamp))
    }
}

impl FabStore for PostgresLinkState {
    fn put_fab(&self, hash: &str, content: &[u8]) -> Result<(), StateError> {
        self.call(|| async {
            let client = self.client().await?;
            execute(
                &client,
                "INSERT INTO fab (hash, content) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                &[&hash, &content],
            )
            .await
        })?;
        Ok(())
    }

    fn fab(&self, hash: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.call(|| async {
            let client = self.client().await?;
            let row = opt_row(&client, "SELECT content FROM fab WHERE hash = $1", &[&hash]).await?;
            row.map(|row| get(&row, 0)).transpose()
        })
    }
}

/// Applies every migration newer than the recorded schema version, in one transaction under
/// an advisory lock, so replicas starting together migrate once and never see half a schema.
async fn migrate(client: &mut Object) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS flwr_schema (\
             singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), \
             version   bigint  NOT NULL)",
    )
    .await?;
    let current: i64 = match tx.query_opt("SELECT version FROM flwr_schema", &[]).await? {
        Some(row) => get(&row, 0)?,
        None => 0,
    };
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if current > latest {
        return Err(StateError::UnsupportedSchema(current).into());
    }
    if current == latest {
        return Ok(());
    }
    for (_, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        tx.batch_execute(sql).await?;
    }
    tx.execute(
        "INSERT INTO flwr_schema (singleton, version) VALUES (true, $1) \
         ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        &[&latest],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Queues a change notification, sent when the transaction commits.
async fn notify(tx: &deadpool_postgres::Transaction<'_>, change: Change) -> Result<(), Failure> {
    execute(
        tx,
        "SELECT pg_notify('flwr_changes', $1)",
        &[&payload(change)],
    )
    .await?;
    Ok(())
}

/// Why one attempt of a call failed.
enum Failure {
    /// The server or the connection failed; may be retried if [`transient`].
    Db(tokio_postgres::Error),
    /// No pooled connection could be had (the message names the database).
    Pool(String),
    /// A store-level outcome (not found, corrupt record, …), returned as is.
    State(StateError),
}

impl Failure {
    fn into_state(self) -> StateError {
        match self {
            Self::Db(err) => postgres_error(&err),
            Self::Pool(message) => StateError::Postgres(message),
            Self::State(err) => err,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(err)
    }
}

impl From<StateError> for Failure {
    fn from(err: StateError) -> Self {
        Self::State(err)
    }
}

impl From<prost::DecodeError> for Failure {
    fn from(err: prost::DecodeError) -> Self {
        Self::State(StateError::CorruptRecord(err))
    }
}

/// Whether the server aborted the transaction in a way that a retry may resolve.
fn transient(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// A driver error as a [`StateError::Postgres`] with its causes ("db error: ERROR: …", "error
/// connecting to server: Connection refused"): the driver's own text names only the kind. The
/// driver never quotes connection parameters in its errors, so the text holds no password.
fn postgres_error(err: &tokio_postgres::Error) -> StateError {
    StateError::Postgres(chain(err))
}

/// `err` and its sources, joined by ": ".
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `user@host:port/dbname` of a configuration, for messages.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one per host; 5432 when none is given.
            let ports = config.get_ports();
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "postgresql://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The password of a URL, in every form an error could quote it, to scrub from messages.
struct Secrets(Vec<String>);

impl Secrets {
    fn of(url: &str) -> Self {
        let mut secrets = Vec::new();
        let authority = url
            .split_once("://")
            .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_owned());
            }
        }
        if let Some(password) = url
            .parse::<Config>()
            .ok()
            .and_then(|config| config.get_password().map(<[u8]>::to_vec))
            .and_then(|bytes| String::from_utf8(bytes).ok())
        {
            secrets.push(password);
        }
        secrets.retain(|secret| !secret.is_empty());
        Self(secrets)
    }

    fn redact(&self, text: &str) -> String {
        self.0
            .iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }
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
fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, Failure> {
    Ok(M::decode(bytes)?)
}

/// Decodes a task blob read from the database; its array payloads become slices of the blob
/// instead of copies.
fn decode_task<M: Message + Default>(blob: Vec<u8>) -> Result<M, Failure> {
    Ok(M::decode(prost::bytes::Bytes::from(blob))?)
}

/// Column `index` of `row`.
fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, Failure> {
    Ok(row.try_get(index)?)
}

/// Every row of a (cached, prepared) statement.
async fn rows<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

/// The row of a statement that yields at most one.
async fn opt_row<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_opt(&statement, params).await?)
}

/// The row of a statement that yields exactly one.
async fn one_row<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_one(&statement, params).await?)
}

/// Runs a statement; the number of rows it changed.
async fn execute<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.execute(&statement, params).await?)
}

/// The raw columns of a `run` row (see [`RUN_COLUMNS`]).
struct RunRow {
    run_id: i64,
    fab_id: String,
    fab_version: String,
    fab_hash: String,
    override_config: Vec<u8>,
    timestamps: [String; 4],
    status: RunStatus,
}

impl RunRow {
    /// Reads the [`RUN_COLUMNS`] of a row.
    fn read(row: &Row) -> Result<Self, Failure> {
        Ok(Self {
            run_id: get(row, 0)?,
            fab_id: get(row, 1)?,
            fab_version: get(row, 2)?,
            fab_hash: get(row, 3)?,
            override_config: get(row, 4)?,
            timestamps: [get(row, 5)?, get(row, 6)?, get(row, 7)?, get(row, 8)?],
            status: RunStatus {
                status: get(row, 9)?,
                sub_status: get(row, 10)?,
                details: get(row, 11)?,
            },
        })
    }

    /// The full `Run` this row stores.
    fn into_run(self) -> Result<Run, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{FINISHED, PENDING};

    #[test]
    fn ids_keep_their_bit_pattern() {
        for id in [0, 1, i64::MAX as u64, 1 << 63, u64::MAX] {
            assert_eq!(id_from_sql(sql_id(id)), id);
        }
        assert_eq!(sql_id(u64::MAX), -1);
    }

    #[test]
    fn statuses_spelled_out_in_sql_match_the_lifecycle() {
        assert_eq!(PENDING, "pending");
        assert_eq!(FINISHED, "finished");
        for sql in [PENDING_RUN, CLAIM_RUN] {
            assert!(sql.contains("status = 'pending'"), "{sql}");
        }
        for sql in [RENEW_LEASES, TAKE_OVER] {
            assert!(sql.contains("status <> 'finished'"), "{sql}");
        }
        assert!(TAKE_OVER.contains("SET status = 'pending'"));
        assert_eq!(listen::CHANNEL, "flwr_changes");
    }

    /// The plan of every hot statement reads an index, never a whole table (sequential scans
    /// are priced out, so a plan that still has one has no index to use).
    #[test]
    fn hot_statements_use_indexes() {
        let cluster = flwr_testkit::TempPostgres::shared().unwrap();
        let url = cluster.fresh_database().unwrap();
        let state = PostgresLinkState::connect(&url, Arc::new(crate::SystemClock)).unwrap();
        let key: &[u8] = b"key";
        let ids = vec![1_i64];
        let hot: [(&str, &[&(dyn ToSql + Sync)], &str); 11] = [
            (
                TAKE_QUEUED,
                &[&false, &1_i64, &5_i64, &1.0_f64],
                "idx_task_ins_queue",
            ),
            (
                STORE_TASK_INS,
                &[&"t", &1_i64, &false, &1_i64, &key, &"n:1", &1.0_f64],
                "node_pkey",
            ),
            (
                STORE_TASK_RES,
                &[&"t", &"i", &1_i64, &key, &"r:1"],
                "run_run_id_key",
            ),
            (PING, &[&1.0_f64, &1.0_f64, &1_i64], "node_pkey"),
            (NODE_ONLINE, &[&1_i64, &1.0_f64], "node_pkey"),
            (NODE_OF_KEY, &[&key], "node_public_key_key"),
            (ONLINE_NODES, &[&1.0_f64], "idx_online_until"),
            (PENDING_RUN, &[&"me"], "idx_run_pending"),
            (CLAIM_RUN, &[&"me", &2.0_f64, &1.0_f64], "idx_run_pending"),
            (RENEW_LEASES, &[&2.0_f64, &ids, &"me"], "run_run_id_key"),
            (TAKE_OVER, &[&1.0_f64, &"me", &2.0_f64], "idx_run_leases"),
        ];
        let plans = state
            .block_on(async {
                let client = state.client().await?;
                client.batch_execute("SET enable_seqscan = off").await?;
                let mut plans = Vec::new();
                for (sql, params, index) in hot {
                    let lines = rows(&client, &format!("EXPLAIN {sql}"), params)
                        .await?
                        .iter()
                        .map(|row| get::<String>(row, 0))
                        .collect::<Result<Vec<_>, Failure>>()?;
                    plans.push((sql, index, lines.join("\n")));
                }
                Ok(plans)
            })
            .unwrap();
        for (sql, index, plan) in plans {
            assert!(plan.contains(index), "{sql}\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
        }
    }

    #[test]
    fn postgres_urls_are_recognised() {
        assert!(is_postgres_url("postgresql://u:p@h:5432/db"));
        assert!(is_postgres_url("postgres://h/db"));
        assert!(!is_postgres_url("state.db"));
        assert!(!is_postgres_url(":memory:"));
        assert!(!is_postgres_url("file:state.db"));
    }

    #[test]
    fn messages_name_the_target_but_never_the_password() {
        let url = "postgresql://flwr:s%40cret@db.example:6543/flwr?connect_timeout=3";
        let config: Config = url.parse().unwrap();
        assert_eq!(describe(&config), "postgresql://flwr@db.example:6543/flwr");
        let secrets = Secrets::of(url);
        assert_eq!(secrets.redact("saw s%40cret and s@cret"), "saw *** and ***");
        let bad = "postgresql://flwr:hunter2@db:notaport/flwr";
        let err = PostgresLinkState::connect(bad, Arc::new(crate::SystemClock)).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("invalid PostgreSQL URL"), "{text}");
    }
}
