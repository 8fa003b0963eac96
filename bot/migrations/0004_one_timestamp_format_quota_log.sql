-- One timestamp format across the database: UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (as the
-- ledger stores it, bot.db.ts). Jobs were stored as isoformat 'YYYY-MM-DDTHH:MM:SS.mmm+00:00'
-- and are converted here. Written to run unchanged on SQLite and PostgreSQL.
UPDATE jobs SET created_at = replace(substr(created_at, 1, 23), 'T', ' ') || '000'
 WHERE created_at LIKE '____-__-__T__:__:__.___+00:00';
UPDATE jobs SET started_at = replace(substr(started_at, 1, 23), 'T', ' ') || '000'
 WHERE started_at LIKE '____-__-__T__:__:__.___+00:00';
UPDATE jobs SET finished_at = replace(substr(finished_at, 1, 23), 'T', ' ') || '000'
 WHERE finished_at LIKE '____-__-__T__:__:__.___+00:00';

-- "/quota log": the channel a guild's quota changes and budget alerts are posted to.
ALTER TABLE guild_settings ADD COLUMN log_channel_id BIGINT;

-- Budget alerts (80 %, 100 % of the server budget) claimed once per guild, period and
-- threshold, whichever process sees the threshold crossed first.
CREATE TABLE budget_alerts (
    guild_id        BIGINT  NOT NULL,
    period_start    TEXT    NOT NULL,
    threshold       BIGINT  NOT NULL CHECK (threshold > 0),
    created_at      TEXT    NOT NULL,
    PRIMARY KEY (guild_id, period_start, threshold)
);

-- The owner's total budget sums live entries of every guild since the period start.
CREATE INDEX ledger_created ON ledger_entries (created_at);
