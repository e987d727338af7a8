-- The newest conversation keyed by this room name.
SELECT id, status FROM conversations WHERE room = %(room)s ORDER BY created_at DESC, id DESC LIMIT 1
