-- Adds an entry key to a tag's index: a sorted set of entry keys scored by
-- when each entry expires (ms, Redis clock). Members whose entries have
-- expired are dropped as new ones come, so an index does not keep growing
-- with entries that are long gone (cache-busting URLs under a site-wide
-- tag); the index lives as long as its longest-lived member.
-- KEYS[1] the tag index; ARGV[1] entry key, ARGV[2] ttl ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], 'GT', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
