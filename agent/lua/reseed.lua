#!lua
-- Replace a conversation's list with the union of what it holds and the given messages (merged from every
-- tier by resume), keep the newest `cap` by id, and mark it complete. Atomic, so an append racing with it is
-- kept. UUIDv7 text sorts like its time.
-- KEYS[1] list; ARGV[1] cap, ARGV[2] ttl seconds, ARGV[3..] id, encoded message, id, encoded message, ...
local byid = {}
local current = redis.call('LRANGE', KEYS[1], 1, -1)
for _, raw in ipairs(current) do
  byid[cjson.decode(raw)['id']] = raw
end
for i = 3, #ARGV, 2 do
  byid[ARGV[i]] = ARGV[i + 1]
end
local ids = {}
for id in pairs(byid) do table.insert(ids, id) end
table.sort(ids)
local cap = tonumber(ARGV[1])
local first = math.max(1, #ids - cap + 1)
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], 'H:complete')
for i = first, #ids do
  redis.call('RPUSH', KEYS[1], byid[ids[i]])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #ids - first + 1
