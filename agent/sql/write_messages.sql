-- One statement for a whole batch; a message already stored (a retry, a replay, a spool import) is skipped.
INSERT INTO messages (conversation_id, id, role, participant, content, created_at, metadata)
SELECT conversation_id, id, role, participant, content, created_at, metadata::jsonb
FROM unnest(
    %(conversation_ids)b::text[], %(ids)b::uuid[], %(roles)b::text[], %(participants)b::text[],
    %(contents)b::text[], %(created_ats)b::timestamptz[], %(metadatas)b::text[]
) AS m(conversation_id, id, role, participant, content, created_at, metadata)
ON CONFLICT DO NOTHING
