-- Upscale jobs: one row per accepted /upscale, for /usage, progress and restart recovery.
CREATE TABLE jobs (
    id              TEXT    PRIMARY KEY,
    guild_id        INTEGER NOT NULL,
    channel_id      INTEGER NOT NULL,
    member_id       INTEGER NOT NULL,
    reservation_id  TEXT,
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'delivered', 'failed')),
    stage           TEXT    NOT NULL DEFAULT 'queued',
    output_format   TEXT    NOT NULL,
    source_name     TEXT    NOT NULL,
    input_path      TEXT,
    input_bytes     INTEGER,
    input_width     INTEGER,
    input_height    INTEGER,
    output_width    INTEGER,
    output_height   INTEGER,
    output_bytes    INTEGER,
    error_kind      TEXT,
    message_id      INTEGER,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);

CREATE INDEX jobs_unfinished ON jobs (status) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
