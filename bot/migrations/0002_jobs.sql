-- Upscale jobs: one row per accepted /upscale, for /usage, progress and restart recovery.
CREATE TABLE jobs (
    id              TEXT    PRIMARY KEY,
    guild_id        BIGINT  NOT NULL,
    channel_id      BIGINT  NOT NULL,
    member_id       BIGINT  NOT NULL,
    reservation_id  TEXT,
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'delivered', 'failed')),
    stage           TEXT    NOT NULL DEFAULT 'queued',
    output_format   TEXT    NOT NULL,
    source_name     TEXT    NOT NULL,
    input_path      TEXT,
    input_bytes     BIGINT,
    input_width     BIGINT,
    input_height    BIGINT,
    output_width    BIGINT,
    output_height   BIGINT,
    output_bytes    BIGINT,
    error_kind      TEXT,
    message_id      BIGINT,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);

CREATE INDEX jobs_unfinished ON jobs (status) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
