-- Adds a session to its user's index. The index holds session *keys* (hashes of ids), never ids.
-- KEYS[1]  the user's index hash
-- ARGV[1]  the session key, ARGV[2] its creation time (ms), ARGV[3] the absolute lifetime (ms)
-- The index lives as long as the longest-lived session in it (expiry only ever extended).
-- Returns the number of entries (the caller prunes ended sessions now and then).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return redis.call('HLEN', KEYS[1])
