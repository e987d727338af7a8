-- Entries set aside by the flusher; a retry of the same batch is skipped.
INSERT INTO dead_letters (entry, reason, raw)
SELECT * FROM unnest(%(entries)s::text[], %(reasons)s::text[], %(raws)s::bytea[])
ON CONFLICT DO NOTHING
