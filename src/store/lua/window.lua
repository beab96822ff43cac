-- Sliding windows for the heuristics, with the same semantics as src/store/window.rs:
-- a sum over the last `window` in ten slots, and distinct members (capped) seen in it.
--
-- For op i: KEYS[2i-1] a hash (absolute slot index -> sum), KEYS[2i] a sorted set
-- (member -> last seen, us). Six ARGV per op: "1" to commit it, window (us), amount
-- (negative to give back a reservation), member ("" for none), cap, near ("" for none).
--
-- Returns {total_1, distinct_1, near_1, total_2, ...}: each window as if this request
-- were added (and, when committing, with it added). Keys expire with their window.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS / 2 do
  local counts, members = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 6 * (i - 1)
  local commit = ARGV[a + 1] == '1'
  local window = tonumber(ARGV[a + 2])
  local amount = tonumber(ARGV[a + 3])
  local member = ARGV[a + 4]
  local cap = math.max(tonumber(ARGV[a + 5]), 1)
  local near_d = ARGV[a + 6]
  local slot = math.max(math.floor(window / 10), 1)
  local cur = math.floor(now / slot)

  -- Slots of this window: (cur - 10, cur]. Anything else slid out, or was written with
  -- another slot width (a reload changed the window): dropped, never renewed — but not
  -- by a give-back (negative amount), which may come from a request decided before the
  -- reload: the window written since holds nothing of it and is left alone.
  local total = amount
  local slots = {}
  local h = redis.call('HGETALL', counts)
  for j = 1, #h, 2 do
    local idx = tonumber(h[j])
    if idx <= cur - 10 or idx > cur then
      if amount >= 0 then
        redis.call('HDEL', counts, h[j])
      end
    else
      total = total + tonumber(h[j + 1])
      slots[idx] = tonumber(h[j + 1])
    end
  end

  -- Windows that count no members (sums only) never touch their members key.
  local card = 0
  local known = false
  local near = 0
  if member ~= '' then
    redis.call('ZREMRANGEBYSCORE', members, '-inf', now - window)
    card = redis.call('ZCARD', members)
    known = redis.call('ZSCORE', members, member) ~= false
    if near_d ~= '' then
      local m, d = tonumber(member), tonumber(near_d)
      for _, x in ipairs(redis.call('ZRANGE', members, 0, -1)) do
        if x ~= member and math.abs(tonumber(x) - m) <= d then
          near = near + 1
        end
      end
    end
  end
  local distinct = card
  if member ~= '' and not known then distinct = distinct + 1 end
  out[#out + 1] = total
  out[#out + 1] = math.min(distinct, cap + 1)
  out[#out + 1] = near

  if commit then
    local ttl_ms = math.floor((window + slot) / 1000) + 1
    if amount > 0 then
      redis.call('HINCRBY', counts, string.format('%.0f', cur), amount)
      redis.call('PEXPIRE', counts, ttl_ms)
    elseif amount < 0 then
      -- A reservation given back (Window::take_back): from the newest slot back, never
      -- below zero, so that no slot outlives what it cancels.
      local left = -amount
      for idx = cur, cur - 9, -1 do
        local have = slots[idx] or 0
        local take = math.min(left, have)
        if take > 0 then
          redis.call('HINCRBY', counts, string.format('%.0f', idx), -take)
          left = left - take
        end
        if left == 0 then break end
      end
    end
    if member ~= '' then
      if not known and card >= cap then
        redis.call('ZPOPMIN', members, 1)
      end
      redis.call('ZADD', members, now, member)
      redis.call('PEXPIRE', members, ttl_ms)
    end
  end
end
return out
