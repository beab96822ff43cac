-- GCRA over every key of one request, all-or-nothing, on the server's clock.
-- The same arithmetic as src/decide/gcra.rs, in microseconds.
--
-- KEYS[i]  the TAT key of check i (a decimal count of microseconds since the epoch)
-- ARGV[1]  "1" to commit when every check passes, "0" for a dry run
-- ARGV[2+3(i-1)], ARGV[3+3(i-1)], ARGV[4+3(i-1)]  interval (us), burst, cost of check i
--
-- Returns {1, remaining_1, reset_us_1, remaining_2, reset_us_2, ...} when every check
-- passes (and commits them, each key expiring when its TAT has passed), or
-- {0, i, retry_after_us} naming the check that needs the longest wait (nothing committed
-- but the settling of a TAT a slower rate left, below).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local commit = ARGV[1] == '1'
local out = {1}
local new = {}
local worst_i, worst = 0, -1
for i = 1, #KEYS do
  local interval = math.max(tonumber(ARGV[3 * i - 1]), 1)
  local burst = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  local tau = interval * burst
  local horizon = now + tau
  if tat > horizon then
    -- Left by a slower rate before a reload: an empty bucket, refilling at this rate
    -- from now, whatever this request's outcome (as gcra::settle).
    tat = horizon
    if commit then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor(tau / 1000) + 1)
    end
  end
  local ntat = math.max(tat, now) + interval * cost
  if ntat <= horizon then
    new[i] = ntat
    out[#out + 1] = math.floor((horizon - ntat) / interval)
    out[#out + 1] = ntat - now
  else
    local retry
    if cost > burst then retry = tau else retry = ntat - horizon end
    if retry > worst then
      worst = retry
      worst_i = i
    end
  end
end
if worst_i > 0 then
  return {0, worst_i, worst}
end
if commit then
  for i = 1, #KEYS do
    -- %.0f: Lua's default number format would round a 16-digit count of microseconds.
    local ttl_ms = math.floor((new[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', new[i]), 'PX', ttl_ms)
  end
end
return out
