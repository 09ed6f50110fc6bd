-- Hit-for-pass: the origin's last response for this key was not storable.
-- KEYS[1] the entry hash; ARGV[1] normalized uri, ARGV[2] ttl in ms.
-- Field `pass` = deadline in ms since the Unix epoch (Redis TIME). A hash
-- holding nothing else expires with the marker; a longer-lived hash (stale
-- variants kept for revalidation) keeps its expiry and the deadline applies.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'uri', ARGV[1], 'pass', string.format('%d', now + ttl))
local pttl = redis.call('PTTL', KEYS[1])
if pttl < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
