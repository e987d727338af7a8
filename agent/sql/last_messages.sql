SELECT id::text, conversation_id, role, participant, content, extract(epoch FROM created_at), metadata::text
FROM messages
WHERE conversation_id = %(conversation_id)s
ORDER BY id DESC
LIMIT %(n)s
