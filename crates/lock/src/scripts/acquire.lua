-- Takes the lock KEYS[1] for ARGV[1] (a random token) during ARGV[2] ms, if free,
-- and issues a fencing token from KEYS[2] in the same atomic step.
-- KEYS[1] lock key, KEYS[2] fence key (same hash tag)
-- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] fence key lifetime ms
-- Returns {1, fence} when taken, {0, pttl of the current holder} otherwise.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
-- The fence counts up by one per acquisition. A new (or expired, or lost)
-- counter starts at the server time in microseconds, which is larger than any
-- fence issued before as long as the server clock does not go back: the
-- counter's expiry never breaks monotonicity, and no per-name key lives forever.
local fence = redis.call('INCR', KEYS[2])
-- A small value is a counter INCR just created (here, or in the MULTI/EXEC
-- acquisition of locks.rs whose follow-up did not run): never a fence.
if fence < 1000000000000000 then
  local t = redis.call('TIME')
  fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', ARGV[3])
end
return {1, fence}
