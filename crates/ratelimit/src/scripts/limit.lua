-- redlayer-ratelimit: every policy of one decision, atomically, in one round trip.
--
-- KEYS[i]      the state key of policy i (all keys share one hash tag: one slot)
-- ARGV[1]      cost (integer >= 0; 0 only reads)
-- ARGV[2]      number of policies n
-- ARGV[3 + 4*(i-1) ..]  per policy: algorithm (1 gcra, 2 fixed window,
--              3 sliding window counter, 4 sliding window log), count,
--              period (microseconds), burst
--
-- Time comes from the Redis server (TIME), never from the application.
-- Phase 1 evaluates every policy without writing its decision (it only
-- corrects a state a clock left too far ahead, and trims a log); phase 2 writes only when all
-- of them allow: a request denied by any policy consumes from none.
--
-- Returns per policy: allowed, remaining, reset_us, retry_us (the request is
-- allowed when every policy allows it), where retry_us is -1 when the cost can never fit (cost > limit) and 0 when allowed.

local call, floor, ceil, format = redis.call, math.floor, math.ceil, string.format
local t = call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

-- A TTL in whole milliseconds, as an integer string: Redis would write a Lua
-- number such as 1e8 in exponent form, which PX / PEXPIRE refuse.
local function ms_ceil(us)
  local ms = ceil(us / 1000)
  if ms < 1 then ms = 1 end
  if ms > 1e15 then ms = 1e15 end
  return format('%d', ms)
end

-- A stored number, or nil for a value written by something else: 'abc', and
-- 'nan' or 'inf', which tonumber takes (a NaN state would allow every
-- request). A GCRA key holding one fails the decision; a window counter
-- holding one counts as empty, and is replaced.
local function num(s)
  local v = tonumber(s)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end

local results = {}
local writes = {}
local all = 1
local before = {}

for i = 1, n do
  local base = 3 + 4 * (i - 1)
  local algo = tonumber(ARGV[base])
  local count = tonumber(ARGV[base + 1])
  local period = tonumber(ARGV[base + 2])
  local burst = tonumber(ARGV[base + 3])
  local key = KEYS[i]
  local ok, remaining, reset, retry = 1, 0, 0, 0
  -- rb, tb: remaining and reset if this request is not charged
  local rb, tb = 0, 0

  if algo == 1 then
    local interval = floor(period / count)
    if interval < 1 then interval = 1 end
    local dvt = interval * burst
    local stored = call('GET', key)
    local tat = num(stored or '0')
    if tat == nil then
      return redis.error_reply('redlayer: ' .. key .. ' holds no rate-limit state')
    end
    if tat < now then tat = now end
    -- Never more than a full burst ahead (only a clock that went back, say
    -- after a failover, can leave it there): corrected in place, so the
    -- lockout ends after the burst, not after the clocks' difference.
    if tat > now + dvt then
      tat = now + dvt
      call('SET', key, format('%d', tat), 'PX', ms_ceil(dvt))
    end
    local new_tat = tat + interval * cost
    local allow_at = new_tat - dvt
    local after = new_tat
    if now < allow_at then
      ok = 0
      after = tat
      if interval * cost > dvt then retry = -1 else retry = allow_at - now end
    else
      writes[#writes + 1] = {1, key, new_tat, ms_ceil(new_tat - now)}
    end
    remaining = floor((dvt - (after - now)) / interval)
    reset = after - now
    rb = floor((dvt - (tat - now)) / interval)
    tb = tat - now
  elseif algo == 2 then
    local w = floor(now / period)
    local v = call('HMGET', key, 'w', 'n')
    local used = 0
    if num(v[1]) == w then used = num(v[2]) or 0 end
    local ends = (w + 1) * period - now
    rb = count - used
    if used > 0 then tb = ends end
    if used + cost > count then
      ok = 0
      if cost > count then retry = -1 else retry = ends end
    else
      used = used + cost
      writes[#writes + 1] = {2, key, w, used, ms_ceil(ends)}
    end
    remaining = count - used
    reset = ends
  elseif algo == 3 then
    local w = floor(now / period)
    local elapsed = now - w * period
    local v = call('HMGET', key, 'w', 'c', 'p')
    local sw = num(v[1])
    local cur, prev = 0, 0
    if sw == w then
      cur = num(v[2]) or 0
      prev = num(v[3]) or 0
    elseif sw == w - 1 then
      prev = num(v[2]) or 0
    end
    local est = prev * (period - elapsed) / period + cur
    rb = floor(count - est)
    if cur > 0 then tb = 2 * period - elapsed elseif prev > 0 then tb = period - elapsed end
    if est + cost > count then
      ok = 0
      local need = count - cost - cur
      if count - cost < 0 then
        retry = -1
      elseif need >= 0 and prev > 0 then
        retry = ceil(period - need * period / prev - elapsed)
      elseif cur + cost <= count or cur == 0 then
        retry = period - elapsed
      else
        local t2 = period - (count - cost) * period / cur
        if t2 < 0 then t2 = 0 end
        retry = ceil(period - elapsed + t2)
      end
      if retry ~= -1 and retry < 1 then retry = 1 end
    else
      cur = cur + cost
      est = est + cost
      local ttl = 2 * period - elapsed
      writes[#writes + 1] = {3, key, w, cur, prev, ms_ceil(ttl)}
    end
    remaining = floor(count - est)
    if cur > 0 then reset = 2 * period - elapsed elseif prev > 0 then reset = period - elapsed else reset = 0 end
  else
    call('ZREMRANGEBYSCORE', key, '-inf', now - period)
    local used = call('ZCARD', key)
    rb = count - used
    local first = call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then tb = tonumber(first[2]) + period - now end
    if used + cost > count then
      ok = 0
      if cost > count then
        retry = -1
      else
        local k = used + cost - count
        local entry = call('ZRANGE', key, k - 1, k - 1, 'WITHSCORES')
        retry = tonumber(entry[2]) + period - now
        if retry < 1 then retry = 1 end
      end
    else
      writes[#writes + 1] = {4, key, used, ms_ceil(period)}
      used = used + cost
    end
    remaining = count - used
    local oldest = call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if oldest[2] then reset = tonumber(oldest[2]) + period - now elseif used > 0 then reset = period end
  end

  if ok == 1 then
    before[2 * i - 1], before[2 * i] = rb, tb
  else
    before[2 * i - 1], before[2 * i] = remaining, reset
  end
  if remaining < 0 then remaining = 0 end
  if reset < 0 then reset = 0 end
  if ok == 0 then all = 0 end
  local r = 4 * i - 3
  results[r], results[r + 1], results[r + 2], results[r + 3] = ok, remaining, reset, retry
end

if all == 1 and cost > 0 then
  for _, wr in ipairs(writes) do
    local kind, key = wr[1], wr[2]
    if kind == 1 then
      call('SET', key, format('%d', wr[3]), 'PX', wr[4])
    elseif kind == 2 then
      call('HSET', key, 'w', format('%d', wr[3]), 'n', wr[4])
      call('PEXPIRE', key, wr[5])
    elseif kind == 3 then
      call('HSET', key, 'w', format('%d', wr[3]), 'c', wr[4], 'p', wr[5])
      call('PEXPIRE', key, wr[6])
    else
      local stamp = format('%d', now)
      for j = 1, cost do
        call('ZADD', key, now, stamp .. ':' .. (wr[3] + j))
      end
      call('PEXPIRE', key, wr[4])
    end
  end
end

if all == 0 or cost == 0 then
  -- Nothing was charged: report every policy as it stands.
  for i = 1, n do
    local rb, tb = before[2 * i - 1], before[2 * i]
    if rb < 0 then rb = 0 end
    if tb < 0 then tb = 0 end
    results[4 * i - 2] = rb
    results[4 * i - 1] = tb
  end
end

return results
