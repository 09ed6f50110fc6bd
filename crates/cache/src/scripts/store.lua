-- Stores one variant of a cached response.
-- KEYS[1] the entry hash; ARGV[1] normalized uri, ARGV[2] vary spec,
-- ARGV[3] variant field, ARGV[4] encoded entry, ARGV[5] ttl in ms.
-- A different Vary spec replaces every stored variant. The key lives as long
-- as its longest-lived variant. A stored response clears the hit-for-pass
-- marker (field `pass`).
local spec = redis.call('HGET', KEYS[1], 'vary')
if spec and spec ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'uri', ARGV[1], 'vary', ARGV[2], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[1], 'pass')
local ttl = tonumber(ARGV[5])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
