-- Stream or spool entries the flusher could not store, kept here with the reason when Redis refused them too
-- (at maxmemory, its own dead-letter stream is refused before anything else).
CREATE TABLE dead_letters (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry   text NOT NULL,  -- the stream entry's id, or the spool file's name
    reason  text NOT NULL,
    raw     bytea NOT NULL,  -- exactly what the entry held, which may be anything
    at      timestamptz NOT NULL DEFAULT now()
);
-- A batch retried after its dead letters were stored (before the stream entries were deleted) adds nothing.
CREATE UNIQUE INDEX dead_letters_entry ON dead_letters (entry, md5(raw));
