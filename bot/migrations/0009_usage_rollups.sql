-- Running totals (rollups) of the ledger, so that no report or budget check reads a
-- guild's whole history (bot.ledger.rollups). Each row sums the entries whose created_at
-- falls in its period, by the period start of that created_at, and changes in the same
-- transaction as the entries it sums. Filled from the existing entries by the Python step
-- of this migration (bot.db.steps: the Monday of a week is not portable SQL).

-- /usage: settled reservations per member and period (daily, weekly, monthly, lifetime),
-- added to when a reservation is committed or refunded.
CREATE TABLE member_rollups (
    guild_id        BIGINT  NOT NULL,
    period          TEXT    NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly', 'lifetime')),
    period_start    TEXT    NOT NULL,
    member_id       BIGINT  NOT NULL,
    upscales        BIGINT  NOT NULL,  -- committed reservations
    credits         BIGINT  NOT NULL,  -- committed credits
    failures        BIGINT  NOT NULL,  -- refunded reservations
    refunds         BIGINT  NOT NULL,  -- refunded credits
    PRIMARY KEY (guild_id, period, period_start, member_id)
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

-- A member's pending credits (/credits) read only the reservations still in flight, and
-- so do the start-up refunds; this replaces the index on state alone.
CREATE INDEX ledger_pending ON ledger_entries (guild_id, member_id) WHERE state = 'reserved';
DROP INDEX ledger_reserved;

-- Only the total budget's sum over every guild's entries read this one.
DROP INDEX ledger_created;
