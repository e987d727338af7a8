-- A conversation opened or closed. Events may arrive late (from the stream or a spool), so the newest wins.
INSERT INTO conversations AS c (id, room, status, status_at, created_at, updated_at)
VALUES (%(id)s, %(room)s, %(status)s, %(at)s, %(at)s, %(at)s)
ON CONFLICT (id) DO UPDATE SET
    status = EXCLUDED.status,
    status_at = EXCLUDED.status_at,
    room = COALESCE(EXCLUDED.room, c.room),
    updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at)
WHERE c.status_at <= EXCLUDED.status_at
