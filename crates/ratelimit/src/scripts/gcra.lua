-- redlayer-ratelimit: the decision of a limiter with exactly one policy, a GCRA
-- (or token bucket) one: limit.lua's GCRA branch alone, with the same state and
-- the same answer, for the common case, at a smaller cost to Redis (fewer
-- arguments, no tables of pending writes, no generic loop).
--
-- KEYS[1]  the state key (the theoretical arrival time, microseconds)
-- ARGV[1]  cost (integer >= 0; 0 only reads)
-- ARGV[2]  emission interval, microseconds: max(1, floor(period / count)),
--          computed by the caller as limit.lua computes it
-- ARGV[3]  burst
--
-- Time comes from the Redis server (TIME), never from the application.
-- Returns {remaining, reset_us} when allowed (the usual answer, kept short),
-- {0, remaining, reset_us, retry_us} when denied (see limit.lua).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local dvt = interval * tonumber(ARGV[3])
local key = KEYS[1]
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - dvt

if now < allow_at then
  -- Denied: nothing is charged; report the state as it stands.
  local retry = allow_at - now
  if interval * cost > dvt then retry = -1 end
  local remaining = math.floor((dvt - (tat - now)) / interval)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, tat - now, retry}
end

local after = tat
if cost > 0 then
  after = new_tat
  -- A TTL in whole milliseconds, as an integer string (see limit.lua).
  local ms = math.ceil((new_tat - now) / 1000)
  if ms < 1 then ms = 1 end
  if ms > 1e15 then ms = 1e15 end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', string.format('%d', ms))
end
local remaining = math.floor((dvt - (after - now)) / interval)
if remaining < 0 then remaining = 0 end
return {remaining, after - now}
