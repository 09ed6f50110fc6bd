-- A counting semaphore: KEYS[1] is a sorted set of holders (member: token,
-- score: lease end in ms, server time). ARGV[1] token, ARGV[2] permits,
-- ARGV[3] lease ms. Expired leases are dropped first, so a dead holder's
-- permit comes back when its lease ends.
-- Returns {1, 0} when granted, {0, ms until the earliest lease ends} otherwise.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  local until_ms = now + tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], string.format('%.0f', until_ms), ARGV[1])
  -- The set lives as long as its longest lease.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], last[2])
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
