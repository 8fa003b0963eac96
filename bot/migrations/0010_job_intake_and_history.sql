-- Jobs from the moment the member sees "thinking", and a job table that stays fast with
-- a year of history (bot.jobs.store).
--
-- * A job is recorded, with its reservation, when the interaction is acknowledged: status
--   'intake' (its image is being fetched and checked, under a lease like a running job),
--   with the attachment's URL, so a process killed during intake leaves a job that the
--   next start, or another process, takes in again. Rebuilt (not altered) because the
--   status CHECK gains 'intake'.
-- * The interaction token moves out of the context JSON into reply_token, erased when
--   the job ends (it is useless after 15 minutes and a credential before). Finished rows
--   of earlier versions lose their context, which held the token.
-- * trail: one JSON line per stage change ([stage, unix time, process, detail]), for
--   "upscale-bot job <id>" and "/usage job:".
-- * resume_notice: the job was cut off by a restart or a dead process; the process that
--   continues it tells the member once, then clears it.
-- * Indexes the hot statements can use at any size: one partial index per unfinished
--   status, written with the very condition the statements use (SQLite only uses a
--   partial index whose condition the query repeats: status IN (...) is not implied by
--   status = ...), the member's jobs, and finished_at for the retention purge.

CREATE TABLE jobs_v3 (
    id              TEXT    PRIMARY KEY,
    guild_id        BIGINT  NOT NULL,
    channel_id      BIGINT  NOT NULL,
    member_id       BIGINT  NOT NULL,
    reservation_id  TEXT,
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('intake', 'queued', 'running', 'delivered', 'failed',
                                      'cancelled')),
    stage           TEXT    NOT NULL DEFAULT 'queued',
    output_format   TEXT    NOT NULL,
    source_name     TEXT    NOT NULL,
    source_url      TEXT,
    source_size     BIGINT,
    source_format   TEXT,
    input_format    TEXT,
    input_bytes     BIGINT,
    input_width     BIGINT,
    input_height    BIGINT,
    original_width  BIGINT,
    original_height BIGINT,
    notes           TEXT,
    context         TEXT,
    reply_token     TEXT,
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
    resume_notice   BIGINT  NOT NULL DEFAULT 0,
    trail           TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);

INSERT INTO jobs_v3 (id, guild_id, channel_id, member_id, reservation_id, status, stage,
                     output_format, source_name, source_format, input_format, input_bytes,
                     input_width, input_height, original_width, original_height, notes,
                     context, asset_path, record_id, result_url, output_width,
                     output_height, output_bytes, error_kind, message_id, lease_owner,
                     lease_expires, claims, created_at, started_at, finished_at)
SELECT id, guild_id, channel_id, member_id, reservation_id, status, stage,
       output_format, source_name, source_format, input_format, input_bytes,
       input_width, input_height, original_width, original_height, notes,
       CASE WHEN status IN ('queued', 'running') THEN context ELSE NULL END,
       asset_path, record_id, result_url, output_width,
       output_height, output_bytes, error_kind, message_id, lease_owner,
       lease_expires, claims, created_at, started_at,
       CASE WHEN status IN ('queued', 'running') THEN finished_at
            ELSE COALESCE(finished_at, started_at, created_at) END
  FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_v3 RENAME TO jobs;

CREATE INDEX jobs_intake ON jobs (lease_expires) WHERE status = 'intake';
CREATE INDEX jobs_queued ON jobs (created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (lease_expires) WHERE status = 'running';
CREATE INDEX jobs_owned ON jobs (lease_owner) WHERE status IN ('intake', 'running');
CREATE INDEX jobs_member ON jobs (guild_id, member_id);
CREATE INDEX jobs_finished ON jobs (finished_at);
