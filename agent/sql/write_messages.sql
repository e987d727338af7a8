-- One statement for a whole batch; a message already stored (a retry, a replay, a spool import) is skipped.
INSERT INTO messages (conversation_id, id, role, participant, content, created_at, metadata)
SELECT conversation_id, id, role, participant, content, created_at, metadata::jsonb
FROM unnest(
    %(conversation_ids)s::text[], %(ids)s::uuid[], %(roles)s::text[], %(participants)s::text[],
    %(contents)s::text[], %(created_ats)s::timestamptz[], %(metadatas)s::text[]
) AS m(conversation_id, id, role, participant, content, created_at, metadata)
ON CONFLICT DO NOTHING
