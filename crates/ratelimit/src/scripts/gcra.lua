-- redlayer-ratelimit: the decisions of a limiter with exactly one policy, a
-- GCRA (or token bucket) one: limit.lua's GCRA branch alone, with the same
-- state and the same answer, for the common case, at a smaller cost to Redis
-- (no tables of pending writes, no generic loop over policies).
--
-- One call decides one or more requests, in order, each on its own key (a key
-- may come more than once: each decision sees the ones before it). Concurrent
-- requests of one process share a call (see batch.rs): on a cluster, those
-- of one key. A key that comes several times (a busy
-- client, a global limit) is read once and written once, after the last of
-- its decisions: GET and SET are most of a decision's cost to Redis.
--
-- KEYS[i]         the state key of decision i (the theoretical arrival time, microseconds)
-- ARGV[3i-2]      its cost (integer >= 0; 0 only reads)
-- ARGV[3i-1]      its emission interval, microseconds: max(1, floor(period / count)),
--                 computed by the caller as limit.lua computes it
-- ARGV[3i]        its burst
--
-- Time comes from the Redis server (TIME), never from the application: one
-- reading for the whole call, which runs atomically.
-- Returns 4 values per decision, as limit.lua does: allowed (1 or 0),
-- remaining, reset_us, retry_us (-1 when the cost can never fit, 0 when allowed);
-- allowed is -1 when the key holds something else than a GCRA state.

local call, floor, ceil, format, tonumber = redis.call, math.floor, math.ceil, string.format, tonumber
local t = call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- A stored number, or nil for a value written by something else: 'abc', and
-- 'nan' or 'inf', which tonumber takes (a NaN state would allow every request).
local function num(s)
  local v = tonumber(s)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end

-- One decision on a key whose state (the theoretical arrival time) is `tat`:
-- its four answers, and the state after it.
local function decide(tat, cost, interval, dvt)
  if tat < now then tat = now end
  -- Never more than a full burst ahead (only a clock that went back, say
  -- after a failover, can leave it there): corrected, so the lockout ends
  -- after the burst, not after the clocks' difference.
  if tat > now + dvt then tat = now + dvt end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - dvt
  if now < allow_at then
    -- Denied: nothing is charged; report the state as it stands.
    local retry = allow_at - now
    if interval * cost > dvt then retry = -1 end
    local remaining = floor((dvt - (tat - now)) / interval)
    if remaining < 0 then remaining = 0 end
    return 0, remaining, tat - now, retry, tat
  end
  local remaining = floor((dvt - (new_tat - now)) / interval)
  if remaining < 0 then remaining = 0 end
  return 1, remaining, new_tat - now, 0, new_tat
end

-- Per key: the state as read (false: not a GCRA state), then as decided.
local read, state, order = {}, {}, {}
local out = {}
for i = 1, #KEYS do
  local n = 4 * (i - 1)
  local key = KEYS[i]
  local tat = state[key]
  if tat == nil then
    local stored = redis.pcall('GET', key)
    tat = num(stored or '0')
    if type(stored) == 'table' or tat == nil then tat = false end
    read[key], state[key] = tat, tat
    order[#order + 1] = key
  end
  if tat == false then
    -- Not a GCRA state (another type, or not a number): this decision fails
    -- alone, the others of the call go on.
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = -1, 0, 0, 0
  else
    local interval = tonumber(ARGV[3 * i - 1])
    local after
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], after =
      decide(tat, tonumber(ARGV[3 * i - 2]), interval, interval * tonumber(ARGV[3 * i]))
    state[key] = after
  end
end

-- One write per key whose state moved: charged, or pulled back to a burst
-- ahead. It expires when it is no different from no state at all (a TTL in
-- whole milliseconds, as an integer string: see limit.lua).
for _, key in ipairs(order) do
  local tat = state[key]
  if tat and tat ~= read[key] and tat > now then
    local ms = ceil((tat - now) / 1000)
    if ms < 1 then ms = 1 end
    if ms > 1e15 then ms = 1e15 end
    call('SET', key, format('%d', tat), 'PX', format('%d', ms))
  end
end
return out
