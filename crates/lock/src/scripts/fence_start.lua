-- Starts the fencing counter KEYS[2] of the lock KEYS[1] from the Redis clock,
-- for the holder of token ARGV[1], keeping the counter ARGV[2] ms.
--
-- The acquire transaction (SET NX PX + INCR) found the counter new: INCR made
-- it 1 (or a few more, from attempts that failed meanwhile), a value that is
-- never handed out as a fence. This raises it to the server time in
-- microseconds (larger than every fence of an earlier counter of this name, as
-- long as the clock does not go back), or one above its value if that is
-- already larger. It runs only while ARGV[1] still holds the lock, so a fence
-- is always issued while its holder holds the lock.
-- Returns the fence, or -1 when the lock is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local t = redis.call('TIME')
local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if current >= fence then fence = current + 1 end
redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', ARGV[2])
return fence
