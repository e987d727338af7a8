#!lua flags=allow-oom
-- Replace the flusher's figures. Allowed at maxmemory, where operators need the backlog most: the old hash is
-- deleted before the new one (as small) is written, so this does not grow memory.
-- KEYS[1] stats hash; ARGV[1] ttl seconds, ARGV[2..] field, value, field, value, ...
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
