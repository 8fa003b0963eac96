-- The 1min.ai circuit breaker, shared by every process: while 1min.ai refuses the key
-- (401) or reports no credits (406), nobody calls it except one probe now and then.
CREATE TABLE service_circuit (
    name            TEXT    PRIMARY KEY,
    state           TEXT    NOT NULL CHECK (state IN ('closed', 'open')),
    reason          TEXT,
    opened_at       DOUBLE PRECISION,
    next_probe      DOUBLE PRECISION
);
-- No row means closed.

-- Small crops of a delivered job's input and result, for the Compare button (kept a
-- week and a day; the full-size images are never kept).
CREATE TABLE compare_crops (
    job_id          TEXT    PRIMARY KEY,
    input_crop      BLOB    NOT NULL,
    result_crop     BLOB    NOT NULL,
    box             TEXT    NOT NULL,
    created_at      TEXT    NOT NULL
);
CREATE INDEX compare_crops_created ON compare_crops (created_at);
