-- A room's dispatch lock, which only its owner renews or releases (another worker mid-dispatch keeps its own).
-- KEYS[1] the lock; ARGV[1] the owner's token; ARGV[2] "renew" or "release"; ARGV[3] the TTL in ms (renew).
-- Returns 1 when the owner's lock was renewed or released, 0 when the lock is not (or no longer) the owner's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == 'release' then
    return redis.call('DEL', KEYS[1])
end
return redis.call('PEXPIRE', KEYS[1], ARGV[3])
