#!lua
-- After the flusher stored a conversation event, let the room's mapping expire again, unless a newer event
-- has replaced it meanwhile.
-- KEYS[1] room key; ARGV[1] conversation id, ARGV[2] status, ARGV[3] ttl
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == ARGV[2] then
  return redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 0
