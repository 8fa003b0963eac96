-- Running totals (rollups) of the ledger, so that no report or budget check reads a
-- guild's whole history (bot.ledger.rollups). Each sum counts the entries whose created_at
-- falls in one period, named by its start, and changes in the same transaction as the
-- entries it sums: a reservation adds to them, a refund moves its credits from live to
-- refunded, a commit changes none (what is neither pending nor refunded was delivered).
-- Filled from the existing entries by the Python step of this migration (bot.db.steps:
-- the Monday of a week is not portable SQL).

-- A member's row, written by every reservation anyway (migration 0008's usage counter:
-- since, used), now also holds their figures for /usage: for the latest daily, weekly,
-- monthly and lifetime period in which they reserved anything (a report is always for
-- the current period), the reservations and credits made in it, and the failures and
-- credits refunded of those. The counters start stale (since = ''): they are recounted
-- on first use, as 0008 did.
DROP TABLE member_usage;
CREATE TABLE member_usage (
    guild_id                BIGINT  NOT NULL,
    member_id               BIGINT  NOT NULL,
    since                   TEXT    NOT NULL,
    used                    BIGINT  NOT NULL,
    daily_start             TEXT    NOT NULL,
    daily_reservations      BIGINT  NOT NULL,
    daily_credits           BIGINT  NOT NULL,
    daily_failures          BIGINT  NOT NULL,
    daily_refunds           BIGINT  NOT NULL,
    weekly_start            TEXT    NOT NULL,
    weekly_reservations     BIGINT  NOT NULL,
    weekly_credits          BIGINT  NOT NULL,
    weekly_failures         BIGINT  NOT NULL,
    weekly_refunds          BIGINT  NOT NULL,
    monthly_start           TEXT    NOT NULL,
    monthly_reservations    BIGINT  NOT NULL,
    monthly_credits         BIGINT  NOT NULL,
    monthly_failures        BIGINT  NOT NULL,
    monthly_refunds         BIGINT  NOT NULL,
    lifetime_start          TEXT    NOT NULL,
    lifetime_reservations   BIGINT  NOT NULL,
    lifetime_credits        BIGINT  NOT NULL,
    lifetime_failures       BIGINT  NOT NULL,
    lifetime_refunds        BIGINT  NOT NULL,
    PRIMARY KEY (guild_id, member_id)
);

-- Per guild and period: live credits (reserved + committed) and refunded credits. Every
-- reservation adds to its guild's four rows and every refund moves credits from used to
-- refunded, in every process (whether or not it enforces TOTAL_BUDGET), under the guild's
-- lock. The guild's row for its own period is its live usage (the server budget); a
-- process that enforces the owner's total budget sums one period's rows across guilds
-- (primary key); the daily rows are the /usage chart (guild_period_guild).
CREATE TABLE guild_period_usage (
    period          TEXT    NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly', 'lifetime')),
    period_start    TEXT    NOT NULL,
    guild_id        BIGINT  NOT NULL,
    used            BIGINT  NOT NULL,
    refunded        BIGINT  NOT NULL,
    PRIMARY KEY (period, period_start, guild_id)
);
CREATE INDEX guild_period_guild ON guild_period_usage (guild_id, period, period_start);

-- The guild's live credits in its own period are its guild_period_usage row now.
DROP TABLE guild_usage;

-- The reservations still in flight, per member (/credits) and per guild (/usage), and at
-- start-up; this replaces the index on state alone.
CREATE INDEX ledger_pending ON ledger_entries (guild_id, member_id) WHERE state = 'reserved';
DROP INDEX ledger_reserved;

-- Only the total budget's sum over every guild's entries read this one.
DROP INDEX ledger_created;
