-- Make sure every conversation a batch of messages touches exists, and move its updated_at (and bypass_id,
-- for messages that did not pass through Redis) forward.
INSERT INTO conversations AS c (id, created_at, updated_at, bypass_id)
SELECT conversation_id, min(created_at), max(created_at), CASE WHEN %(bypass)s THEN max(id::text)::uuid END  -- PostgreSQL 15 has no max(uuid)
FROM unnest(%(conversation_ids)b::text[], %(ids)b::uuid[], %(created_ats)b::timestamptz[])
    AS m(conversation_id, id, created_at)
GROUP BY conversation_id
ON CONFLICT (id) DO UPDATE SET
    updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at),
    bypass_id = GREATEST(c.bypass_id, EXCLUDED.bypass_id)
