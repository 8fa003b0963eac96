-- Running totals (rollups) of the ledger, so that no report or budget check reads a
-- guild's whole history (bot.ledger.rollups). Each sum counts the entries whose created_at
-- falls in one period, named by its start, and changes in the same transaction as the
-- entries it sums. Filled from the existing entries by the Python step of this migration
-- (bot.db.steps: the Monday of a week is not portable SQL).

-- /usage: settled reservations per member, for the latest daily, weekly, monthly and
-- lifetime period in which the member had one (a report is always for the current
-- period; a row whose period start is older counts nothing for it). Each period has its
-- start and four sums: upscales and credits committed, failures and credits refunded.
-- One row per member, so settling a reservation changes one row, not four.
CREATE TABLE member_rollups (
    guild_id            BIGINT  NOT NULL,
    member_id           BIGINT  NOT NULL,
    daily_start         TEXT    NOT NULL,
    daily_upscales      BIGINT  NOT NULL,
    daily_credits       BIGINT  NOT NULL,
    daily_failures      BIGINT  NOT NULL,
    daily_refunds       BIGINT  NOT NULL,
    weekly_start        TEXT    NOT NULL,
    weekly_upscales     BIGINT  NOT NULL,
    weekly_credits      BIGINT  NOT NULL,
    weekly_failures     BIGINT  NOT NULL,
    weekly_refunds      BIGINT  NOT NULL,
    monthly_start       TEXT    NOT NULL,
    monthly_upscales    BIGINT  NOT NULL,
    monthly_credits     BIGINT  NOT NULL,
    monthly_failures    BIGINT  NOT NULL,
    monthly_refunds     BIGINT  NOT NULL,
    lifetime_start      TEXT    NOT NULL,
    lifetime_upscales   BIGINT  NOT NULL,
    lifetime_credits    BIGINT  NOT NULL,
    lifetime_failures   BIGINT  NOT NULL,
    lifetime_refunds    BIGINT  NOT NULL,
    PRIMARY KEY (guild_id, member_id)
);

-- The /usage chart: settled credits per guild and UTC day ('YYYY-MM-DD').
CREATE TABLE guild_day_rollups (
    guild_id        BIGINT  NOT NULL,
    day             TEXT    NOT NULL,
    delivered       BIGINT  NOT NULL,  -- committed credits
    refunded        BIGINT  NOT NULL,  -- refunded credits
    PRIMARY KEY (guild_id, day)
);

-- The owner's total budget: live credits (reserved + committed) per guild and period,
-- added to by every reservation and taken from by every refund, in every process (whether
-- or not it enforces TOTAL_BUDGET), under the guild's lock. A process that enforces the
-- budget sums one period's rows across guilds, through the primary key.
CREATE TABLE guild_period_usage (
    period          TEXT    NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly', 'lifetime')),
    period_start    TEXT    NOT NULL,
    guild_id        BIGINT  NOT NULL,
    used            BIGINT  NOT NULL,
    PRIMARY KEY (period, period_start, guild_id)
);

-- The guild's live credits in its own period are its guild_period_usage row now.
DROP TABLE guild_usage;

-- A member's pending credits (/credits) read only the reservations still in flight, and
-- so do the start-up refunds; this replaces the index on state alone.
CREATE INDEX ledger_pending ON ledger_entries (guild_id, member_id) WHERE state = 'reserved';
DROP INDEX ledger_reserved;

-- Only the total budget's sum over every guild's entries read this one.
DROP INDEX ledger_created;
