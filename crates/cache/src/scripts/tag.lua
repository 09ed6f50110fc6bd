-- Adds an entry key to a tag's index set and keeps the set alive as long as
-- its longest-lived member. KEYS[1] the tag set; ARGV[1] entry key, ARGV[2] ttl ms.
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
