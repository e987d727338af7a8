#!lua
-- Append one message: to the conversation's capped list (element 1 is the coverage header) and to the
-- write-ahead stream, in one atomic round trip. No allow-oom flag: at maxmemory Redis refuses the whole script
-- before it runs, and the caller writes to PostgreSQL instead.
-- KEYS[1] list, KEYS[2] stream
-- ARGV[1] encoded message, ARGV[2] cap, ARGV[3] ttl seconds, ARGV[4] "1" to mark the list partial,
-- ARGV[5] hash of the conversation id (lets resume filter the stream without decoding entries)
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- A list born from an append (after expiry or eviction) cannot vouch for older messages.
  redis.call('RPUSH', KEYS[1], 'H:partial')
elseif ARGV[4] == '1' then
  redis.call('LSET', KEYS[1], 0, 'H:partial')
end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
local cap = tonumber(ARGV[2])
if n > cap + 1 then
  local header = redis.call('LPOP', KEYS[1])
  redis.call('LTRIM', KEYS[1], n - 1 - cap, -1)
  redis.call('LPUSH', KEYS[1], header)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('XADD', KEYS[2], '*', 'k', 'm', 'h', ARGV[5], 'v', ARGV[1])
