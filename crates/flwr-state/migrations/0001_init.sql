-- flwr-state SQLite schema, version 1.
--
-- u64 ids (run_id, node_id) are stored as the signed 64-bit integer with the same bit pattern.
-- Protobuf messages are stored whole as blobs, so nothing (e.g. a task's `error`) is dropped.
-- `seq` columns record insertion order.

CREATE TABLE IF NOT EXISTS run (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id             INTEGER NOT NULL UNIQUE,
    fab_id             TEXT    NOT NULL,
    fab_version        TEXT    NOT NULL,
    fab_hash           TEXT    NOT NULL,
    -- a flwr.proto.Run carrying only `override_config`
    override_config    BLOB    NOT NULL,
    pending_at         TEXT    NOT NULL,
    starting_at        TEXT    NOT NULL DEFAULT '',
    running_at         TEXT    NOT NULL DEFAULT '',
    finished_at        TEXT    NOT NULL DEFAULT '',
    status             TEXT    NOT NULL,
    sub_status         TEXT    NOT NULL DEFAULT '',
    details            TEXT    NOT NULL DEFAULT '',
    -- a flwr.proto.ConfigsRecord
    federation_options BLOB    NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_run_status ON run (status);

CREATE TABLE IF NOT EXISTS context (
    run_id  INTEGER PRIMARY KEY REFERENCES run (run_id),
    -- a flwr.proto.Context
    context BLOB    NOT NULL
);

CREATE TABLE IF NOT EXISTS logs (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id    INTEGER NOT NULL REFERENCES run (run_id),
    timestamp REAL    NOT NULL,
    log       TEXT    NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_logs_run ON logs (run_id, timestamp);

CREATE TABLE IF NOT EXISTS node (
    node_id       INTEGER PRIMARY KEY,
    online_until  REAL    NOT NULL,
    ping_interval REAL    NOT NULL,
    -- PEM SPKI bytes; deleting the row removes the key -> id binding too
    public_key    BLOB    UNIQUE
);

CREATE INDEX IF NOT EXISTS idx_online_until ON node (online_until);

-- the node-auth allow-list
CREATE TABLE IF NOT EXISTS public_key (
    public_key BLOB PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS task_ins (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id            TEXT    NOT NULL UNIQUE,
    run_id             INTEGER NOT NULL REFERENCES run (run_id),
    consumer_anonymous INTEGER NOT NULL,
    consumer_node_id   INTEGER NOT NULL,
    delivered          INTEGER NOT NULL DEFAULT 0,
    -- a flwr.proto.TaskIns, task_id and delivered_at included
    task_ins           BLOB    NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_task_ins_consumer
    ON task_ins (delivered, consumer_anonymous, consumer_node_id);
CREATE INDEX IF NOT EXISTS idx_task_ins_run ON task_ins (run_id);

CREATE TABLE IF NOT EXISTS task_res (
    task_id  TEXT    PRIMARY KEY,
    -- canonical id of the answered TaskIns (ancestry[0]); the latest reply wins
    ins_id   TEXT    NOT NULL UNIQUE,
    run_id   INTEGER NOT NULL REFERENCES run (run_id),
    -- a flwr.proto.TaskRes, task_id included
    task_res BLOB    NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_task_res_run ON task_res (run_id);
