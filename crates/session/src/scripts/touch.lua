-- Refreshes a session's idle expiry (run at most once per touch interval per
-- session, after a load found it due). Never recreates a session.
-- KEYS[1]  the session hash
-- ARGV[1]  idle timeout, ms
-- Returns 1 when refreshed (or KEYS[1] is the alias of a renewed session,
-- see cycle.lua: its loader follows it), 0 when there is no live session.
local meta = redis.call('HMGET', KEYS[1], 'm:a', 'm:r')
if meta[2] then
  return 1
end
local deadline = tonumber(meta[1])
if deadline == nil then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= deadline then
  redis.call('DEL', KEYS[1])
  return 0
end
local ttl = tonumber(ARGV[1])
if deadline - now < ttl then
  ttl = deadline - now
end
redis.call('HSET', KEYS[1], 'm:s', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
