-- "/quota reset" now marks the member's entries of the period (ledger_entries.reset_at)
-- instead of keeping one timestamp per member: entries made in the same instant as a
-- reset, or after the clock stepped back, were not counted at all with the old rule.
-- The entries stay (reports still show them); they just no longer count towards the limit.

ALTER TABLE ledger_entries ADD COLUMN reset_at TEXT;

-- Carry over resets made under the old rule (entries created up to the reset are zeroed).
UPDATE ledger_entries
   SET reset_at = (SELECT r.reset_at FROM usage_resets r
                    WHERE r.guild_id = ledger_entries.guild_id
                      AND r.member_id = ledger_entries.member_id)
 WHERE EXISTS (SELECT 1 FROM usage_resets r
                WHERE r.guild_id = ledger_entries.guild_id
                  AND r.member_id = ledger_entries.member_id
                  AND ledger_entries.created_at <= r.reset_at);

DROP TABLE usage_resets;

-- Grants now count when they were made within the current period (like usage), so a
-- change of period keeps this period's grants.
CREATE INDEX grants_member_created ON grants (guild_id, member_id, created_at);
DROP INDEX grants_member;
