-- A fleet of processes on one database (bot.fleet).

-- IDENTIFY pacing: Discord allows one IDENTIFY per concurrency bucket
-- (shard_id % max_concurrency) every 5 seconds, across every process of the bot. Each row
-- holds the earliest Unix time the bucket's next IDENTIFY may be sent; a process takes
-- its turn under a lock on the bucket and moves the time on.
CREATE TABLE identify_slots (
    bucket          BIGINT  NOT NULL PRIMARY KEY,
    not_before      DOUBLE PRECISION NOT NULL
);

-- Application command sync: the hash of the command set last registered per application
-- and scope ('global' or 'guild:<id>'). A process syncs only when its commands hash
-- differently (or the last sync is old), under a lock, so one process of a fleet syncs.
CREATE TABLE command_syncs (
    scope           TEXT    PRIMARY KEY,
    digest          TEXT    NOT NULL,
    synced_at       TEXT    NOT NULL,
    synced_by       TEXT    NOT NULL
);
