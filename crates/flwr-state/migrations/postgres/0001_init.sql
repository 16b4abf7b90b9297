-- flwr-state PostgreSQL schema, version 1 (applied by PostgresLinkState::connect, which records
-- the version in `flwr_schema`).
--
-- The same tables as the SQLite schema, plus the launch leases of SuperLink replicas and the
-- FAB bytes (every replica answers GetFab). u64 ids (run_id, node_id) are stored as the bigint
-- with the same bit pattern. Protobuf messages are stored whole as bytea, so nothing (e.g. a
-- task's `error`) is dropped. `seq` columns record insertion order.

CREATE TABLE IF NOT EXISTS run (
    seq                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             bigint NOT NULL UNIQUE,
    fab_id             text   NOT NULL,
    fab_version        text   NOT NULL,
    fab_hash           text   NOT NULL,
    -- a flwr.proto.Run carrying only `override_config`
    override_config    bytea  NOT NULL,
    pending_at         text   NOT NULL,
    starting_at        text   NOT NULL DEFAULT '',
    running_at         text   NOT NULL DEFAULT '',
    finished_at        text   NOT NULL DEFAULT '',
    status             text   NOT NULL,
    sub_status         text   NOT NULL DEFAULT '',
    details            text   NOT NULL DEFAULT '',
    -- a flwr.proto.ConfigsRecord
    federation_options bytea  NOT NULL,
    -- the replica that launches (or launched) the run's ServerApp, and until when (unix
    -- seconds) its claim holds; NULL: never claimed
    lease_owner        text,
    lease_until        double precision
);

-- The launcher's queue: pending runs in creation order.
CREATE INDEX IF NOT EXISTS idx_run_pending ON run (seq) WHERE status = 'pending';
-- Orphan detection: claimed runs that have not finished, by lease expiry.
CREATE INDEX IF NOT EXISTS idx_run_leases ON run (lease_until)
    WHERE lease_owner IS NOT NULL AND status <> 'finished';

CREATE TABLE IF NOT EXISTS context (
    run_id  bigint PRIMARY KEY REFERENCES run (run_id),
    -- a flwr.proto.Context
    context bytea  NOT NULL
);

CREATE TABLE IF NOT EXISTS logs (
    seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id    bigint           NOT NULL REFERENCES run (run_id),
    timestamp double precision NOT NULL,
    log       text             NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_logs_run ON logs (run_id, seq);

CREATE TABLE IF NOT EXISTS node (
    node_id       bigint           PRIMARY KEY,
    online_until  double precision NOT NULL,
    ping_interval double precision NOT NULL,
    -- PEM SPKI bytes; deleting the row removes the key -> id binding too. UNIQUE makes two
    -- replicas registering the same key at once conflict instead of both succeeding.
    public_key    bytea            UNIQUE
);

CREATE INDEX IF NOT EXISTS idx_online_until ON node (online_until);

CREATE TABLE IF NOT EXISTS task_ins (
    seq                bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id            text    NOT NULL UNIQUE,
    run_id             bigint  NOT NULL REFERENCES run (run_id),
    consumer_anonymous boolean NOT NULL,
    -- 0 for anonymous consumers
    consumer_node_id   bigint  NOT NULL,
    -- created_at + ttl (unix seconds): deliverable while greater than now
    expires_at         double precision NOT NULL,
    -- left the delivery queue: delivered, or found expired by a pull
    delivered          boolean NOT NULL DEFAULT false,
    -- a flwr.proto.TaskIns, task_id included
    task_ins           bytea   NOT NULL
);

-- The delivery queue: only queued rows, per consumer, oldest first, so that a pull reads
-- exactly the requesting node's queue and a delivered TaskIns costs nothing afterwards.
CREATE INDEX IF NOT EXISTS idx_task_ins_queue
    ON task_ins (consumer_anonymous, consumer_node_id, seq) WHERE NOT delivered;
CREATE INDEX IF NOT EXISTS idx_task_ins_run ON task_ins (run_id);

CREATE TABLE IF NOT EXISTS task_res (
    task_id  text   PRIMARY KEY,
    -- canonical id of the answered TaskIns (ancestry[0]); the latest reply wins. The reply goes
    -- with its instruction, whichever replica deletes that.
    ins_id   text   NOT NULL UNIQUE REFERENCES task_ins (task_id) ON DELETE CASCADE,
    run_id   bigint NOT NULL REFERENCES run (run_id),
    -- a flwr.proto.TaskRes, task_id included
    task_res bytea  NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_task_res_run ON task_res (run_id);

-- FAB archives by SHA-256 (lowercase hex).
CREATE TABLE IF NOT EXISTS fab (
    hash    text  PRIMARY KEY,
    content bytea NOT NULL
);

-- Payloads (models, FAB zips) are large and compress poorly: keep them out of line but skip
-- TOAST's compression, which would cost CPU on every write for little space.
ALTER TABLE task_ins ALTER COLUMN task_ins SET STORAGE EXTERNAL;
ALTER TABLE task_res ALTER COLUMN task_res SET STORAGE EXTERNAL;
ALTER TABLE fab ALTER COLUMN content SET STORAGE EXTERNAL;
