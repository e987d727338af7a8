#!lua flags=allow-oom
-- Bring a room's mapping in line with an event Redis did not take when it happened (refused at maxmemory, or
-- spooled while Redis was down and imported later): if the mapping still names the conversation, "ended" marks
-- it ended (ended wins) and its TTL is set again. Allowed at maxmemory: overwriting a status with one no longer
-- and EXPIRE do not grow memory, and a stale "active" must not outlive an "ended".
-- KEYS[1] room key; ARGV[1] conversation id, ARGV[2] status, ARGV[3] ttl
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'ended' then
  redis.call('HSET', KEYS[1], 'status', 'ended')
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
