-- Durable jobs: every stage a job completes is recorded, so any process can resume it
-- after a restart or take it over from a process that died (its lease ran out).
-- The input image now lives in the database (job_inputs), reachable from every process;
-- what the front end needs to answer the member (interaction token, locale...) is kept
-- as JSON in jobs.context. Rebuilt (not altered) because the status CHECK gains
-- 'cancelled'. Jobs left unfinished by the previous version keep no input here: they are
-- refunded at the next start ("input lost").

CREATE TABLE jobs_v2 (
    id              TEXT    PRIMARY KEY,
    guild_id        BIGINT  NOT NULL,
    channel_id      BIGINT  NOT NULL,
    member_id       BIGINT  NOT NULL,
    reservation_id  TEXT,
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'delivered', 'failed', 'cancelled')),
    stage           TEXT    NOT NULL DEFAULT 'queued',
    output_format   TEXT    NOT NULL,
    source_name     TEXT    NOT NULL,
    source_format   TEXT,
    input_format    TEXT,
    input_bytes     BIGINT,
    input_width     BIGINT,
    input_height    BIGINT,
    original_width  BIGINT,
    original_height BIGINT,
    notes           TEXT,
    context         TEXT,
    asset_path      TEXT,
    record_id       TEXT,
    result_url      TEXT,
    output_width    BIGINT,
    output_height   BIGINT,
    output_bytes    BIGINT,
    error_kind      TEXT,
    message_id      BIGINT,
    lease_owner     TEXT,
    lease_expires   DOUBLE PRECISION,
    claims          BIGINT  NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);

INSERT INTO jobs_v2 (id, guild_id, channel_id, member_id, reservation_id, status, stage,
                     output_format, source_name, input_bytes, input_width, input_height,
                     output_width, output_height, output_bytes, error_kind, message_id,
                     created_at, started_at, finished_at)
SELECT id, guild_id, channel_id, member_id, reservation_id, status, stage,
       output_format, source_name, input_bytes, input_width, input_height,
       output_width, output_height, output_bytes, error_kind, message_id,
       created_at, started_at, finished_at
  FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;

CREATE INDEX jobs_unfinished ON jobs (status, created_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
CREATE INDEX jobs_member ON jobs (guild_id, member_id, status);

-- The prepared input of each unfinished job; deleted when the job ends.
CREATE TABLE job_inputs (
    job_id          TEXT    PRIMARY KEY,
    data            BLOB    NOT NULL
);

-- Start times (Unix seconds) of recent 1min.ai requests: the fleet-wide rate window.
CREATE TABLE onemin_calls (
    id              INTEGER PRIMARY KEY,
    at              DOUBLE PRECISION NOT NULL
);
CREATE INDEX onemin_calls_at ON onemin_calls (at);
