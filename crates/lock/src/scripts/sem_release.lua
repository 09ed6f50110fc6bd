-- Gives back the permit of token ARGV[1] in KEYS[1]. Returns 1 if it was
-- still held (its lease not ended), 0 otherwise; the token goes either way.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) > now then
  return 1
end
return 0
