-- Extends the lease of token ARGV[1] in KEYS[1] to ARGV[2] ms from now, only
-- while it is still held (not expired). Returns 1 when extended.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local until_ms = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', until_ms), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
