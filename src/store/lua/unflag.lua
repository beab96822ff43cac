-- Drops expired entries from the flag index, each only if it still holds the value it
-- was read with: an entry rewritten since (a new block of the same key, set by another
-- instance between the read and this call) stays.
--
-- KEYS[1]  the index hash; ARGV  field, value, field, value, …
local dropped = 0
for i = 1, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        redis.call('HDEL', KEYS[1], ARGV[i])
        dropped = dropped + 1
    end
end
return dropped
