-- flwr-state SQLite schema, version 2: a delivery queue index for tens of thousands of nodes.
--
-- `task_ins.delivered = 1` now means "left the delivery queue": the TaskIns was delivered, or
-- a pull found it expired (it can never be delivered again). The partial index holds only the
-- queued rows, keyed by consumer and ordered by `seq` (the rowid), so a pull reads exactly the
-- requesting node's queue, oldest first, and a delivered TaskIns costs nothing afterwards.

DROP INDEX IF EXISTS idx_task_ins_consumer;

CREATE INDEX IF NOT EXISTS idx_task_ins_queue
    ON task_ins (consumer_anonymous, consumer_node_id) WHERE delivered = 0;
