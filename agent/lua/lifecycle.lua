#!lua
-- Record a conversation's status in Redis: the room's mapping and, when the conversation is new, an empty
-- list that vouches for being complete. When PostgreSQL could not take the event, it also goes into the stream
-- (never evicted), where open looks for it should the mapping be evicted before the flusher has stored it. The
-- mapping always keeps its TTL: a key without one could never be evicted, and nothing would be sure to restore it.
-- KEYS[1] room key (may be unused), KEYS[2] list, KEYS[3] stream
-- ARGV[1] conversation id, ARGV[2] status, ARGV[3] encoded event, ARGV[4] ttl,
-- ARGV[5] "1" when the conversation is new, ARGV[6] "1" to write the event to the stream, ARGV[7] "1" if keyed by room
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], 'H:complete')
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if ARGV[6] == '1' then
  return redis.call('XADD', KEYS[3], '*', 'k', 'c', 'v', ARGV[3])
end
return false
