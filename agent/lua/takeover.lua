-- A room whose lock holder is dead (its heartbeat gone): the lock passes to ARGV[2] only while it is still
-- ARGV[1]'s, or free when ARGV[1] is empty, so two reconcilers seeing the same ghost never both dispatch.
-- KEYS[1] the lock; ARGV[1] the dead holder's token ('' for none); ARGV[2] the new owner's; ARGV[3] the TTL in ms.
-- Returns 1 when the lock was taken over, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if (holder or '') ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
