-- Puts back the members a failed tag purge took out of a tag's index, so that
-- the purge tried again finds them; the index keeps an expiry (its longest
-- member's) and drops members whose entries have expired meanwhile.
-- KEYS[1] the tag index; ARGV score, member, score, member, ...
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i + 1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(top[2])))
end
return 1
