#!lua flags=allow-oom
-- Make the flusher's consumer group (and the stream) unless it exists. Allowed at maxmemory, where XGROUP CREATE
-- is refused: a group is a few hundred bytes, and without it a full stream could never drain.
-- KEYS[1] stream; ARGV[1] group
local reply = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(reply) == 'table' and reply.err then
  if string.find(reply.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(reply.err)
end
return 1
