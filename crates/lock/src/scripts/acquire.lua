-- Takes the lock KEYS[1] for ARGV[1] (a random token) during ARGV[2] ms, if free,
-- and issues a fencing token from KEYS[2] in the same atomic step.
-- KEYS[1] lock key, KEYS[2] fence key (same hash tag)
-- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] fence key lifetime ms
-- Returns {1, fence} when taken, {0, pttl of the current holder} otherwise.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
-- The fence is the larger of the counter plus one and the server time in
-- microseconds, and the counter keeps it. So it is larger than every fence
-- issued before on this server (even if the clock went back: the counter),
-- and larger than every fence issued by a previous primary whose last
-- increments this one never received, a counter lost in a restart or
-- expired after its retention (the clock: fences are at most their time of
-- issue, since a name sees far fewer than one acquisition per microsecond),
-- as long as this server's clock is not behind the previous one's by more
-- than the time the failover took. No per-name key lives forever.
local fence = redis.pcall('INCR', KEYS[2])
if type(fence) == 'table' then
  -- Not a counter (someone overwrote it): no fence, so no lock either.
  redis.call('DEL', KEYS[1])
  return fence
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if fence < now then
  fence = now
  redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', ARGV[3])
end
return {1, fence}
