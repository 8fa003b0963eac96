-- The credit ledger: per-guild settings, limits, grants, reservations and the audit log.
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (sortable, portable).
-- Types are written as both engines read them: BIGINT for Discord ids and counts (64-bit
-- everywhere); INTEGER PRIMARY KEY only for SQLite's rowid alias, which PostgreSQL gets as
-- a 64-bit identity (bot.db.sqltext.pg_ddl).

CREATE TABLE guild_settings (
    guild_id        INTEGER PRIMARY KEY,
    default_limit   BIGINT  NOT NULL CHECK (default_limit >= 0),
    period          TEXT    NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly', 'lifetime')),
    server_budget   BIGINT  NOT NULL DEFAULT 0 CHECK (server_budget >= 0),
    created_at      TEXT    NOT NULL
);

CREATE TABLE role_limits (
    guild_id        BIGINT  NOT NULL REFERENCES guild_settings (guild_id),
    role_id         BIGINT  NOT NULL,
    credit_limit    BIGINT  NOT NULL CHECK (credit_limit >= 0),
    PRIMARY KEY (guild_id, role_id)
);

CREATE TABLE member_limits (
    guild_id        BIGINT  NOT NULL REFERENCES guild_settings (guild_id),
    member_id       BIGINT  NOT NULL,
    credit_limit    BIGINT  NOT NULL CHECK (credit_limit >= 0),
    PRIMARY KEY (guild_id, member_id)
);

-- One-off extra credits (negative takes away) for the period starting at period_start.
CREATE TABLE grants (
    id              INTEGER PRIMARY KEY,
    guild_id        BIGINT  NOT NULL REFERENCES guild_settings (guild_id),
    member_id       BIGINT  NOT NULL,
    amount          BIGINT  NOT NULL,
    period_start    TEXT    NOT NULL,
    actor_id        BIGINT  NOT NULL,
    created_at      TEXT    NOT NULL
);
CREATE INDEX grants_member ON grants (guild_id, member_id, period_start);

-- "/quota reset": usage before reset_at (within the period) no longer counts.
CREATE TABLE usage_resets (
    guild_id        BIGINT  NOT NULL,
    member_id       BIGINT  NOT NULL,
    reset_at        TEXT    NOT NULL,
    PRIMARY KEY (guild_id, member_id)
);

CREATE TABLE ledger_entries (
    id              TEXT    PRIMARY KEY,
    guild_id        BIGINT  NOT NULL,
    member_id       BIGINT  NOT NULL,
    cost            BIGINT  NOT NULL CHECK (cost > 0),
    state           TEXT    NOT NULL CHECK (state IN ('reserved', 'committed', 'refunded')),
    reason          TEXT,
    job_id          TEXT,
    created_at      TEXT    NOT NULL,
    settled_at      TEXT
);
CREATE INDEX ledger_member ON ledger_entries (guild_id, member_id, created_at);
CREATE INDEX ledger_guild ON ledger_entries (guild_id, created_at);
CREATE INDEX ledger_reserved ON ledger_entries (state) WHERE state = 'reserved';

CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    guild_id        BIGINT  NOT NULL,
    actor_id        BIGINT  NOT NULL,
    action          TEXT    NOT NULL,
    target          TEXT,
    old_value       TEXT,
    new_value       TEXT,
    created_at      TEXT    NOT NULL
);
CREATE INDEX audit_guild ON audit_log (guild_id, id);
