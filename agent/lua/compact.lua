#!lua flags=allow-oom
-- Rebuild a stream from its live entries, same ids. XDEL only flags an entry deleted: its bytes stay in the
-- stream's node (in memory, and so in the RDB base of the next AOF rewrite) until every entry of that node is
-- deleted. Forget needs them gone now. Every live entry of the write-ahead stream is unacknowledged (the flusher
-- acknowledges and deletes together), so the group is made again at 0: the flusher reads them all again and
-- stores them idempotently. Blocks Redis for the copy (about 1 s per 100k entries).
-- KEYS[1] stream; ARGV[1] consumer group to make again, or '' for none
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
redis.call('DEL', KEYS[1])
for _, entry in ipairs(entries) do
  redis.call('XADD', KEYS[1], entry[1], unpack(entry[2]))
end
if ARGV[1] ~= '' then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('XSETID', KEYS[1], last)  -- new ids keep growing past the deleted ones
end
return #entries
