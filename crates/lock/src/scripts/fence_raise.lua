-- Redlock: raises the fencing counter KEYS[1] to at least ARGV[1] (the token
-- just issued), keeping it ARGV[2] ms. Once a majority holds a counter at or
-- above a token, every later majority overlaps it and issues a larger one.
-- Returns 1.
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
