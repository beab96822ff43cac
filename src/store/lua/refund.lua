-- Gives back what gcra.lua took, when a request that spans several Cluster slots was
-- committed on some and refused on another (all-or-nothing across nodes).
--
-- KEYS[i]  a TAT key; ARGV[i]  the microseconds to take off it
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat > 0 then
    redis.call('SET', KEYS[i], string.format('%.0f', tat - tonumber(ARGV[i])), 'KEEPTTL')
  end
end
return #KEYS
