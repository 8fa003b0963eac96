-- Running totals of live credits (reserved + committed) for the ledger's hot path, so a
-- reservation reads two rows instead of summing the period's entries (bot.ledger).
--
-- Each row counts the entries created at or after its own `since` (a period start):
-- member_usage those of one member not marked by a "/quota reset", guild_usage all of the
-- guild's. A row whose `since` is not the current period's start (a new period, a changed
-- period, or no row yet) is recomputed from ledger_entries before it is used. Rows change
-- only under the guild's lock: reservations add, refunds subtract, resets recompute.

CREATE TABLE member_usage (
    guild_id        BIGINT  NOT NULL,
    member_id       BIGINT  NOT NULL,
    since           TEXT    NOT NULL,
    used            BIGINT  NOT NULL,
    PRIMARY KEY (guild_id, member_id)
);

CREATE TABLE guild_usage (
    guild_id        BIGINT  NOT NULL PRIMARY KEY,
    since           TEXT    NOT NULL,
    used            BIGINT  NOT NULL
);
