-- flwr-state SQLite schema, version 3: the delivery time of a TaskIns is kept beside it.
--
-- Delivering a TaskIns used to rewrite its whole blob to stamp `delivered_at`, re-encoding and
-- rewriting a model of any size. This table carries the time instead, and it is applied to the
-- TaskIns when it is read. Rows delivered under schema 2 have none: their blob holds the time.

CREATE TABLE IF NOT EXISTS task_ins_delivery (
    seq          INTEGER PRIMARY KEY REFERENCES task_ins (seq) ON DELETE CASCADE,
    delivered_at TEXT    NOT NULL
);
