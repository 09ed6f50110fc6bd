-- Gives a session a new id: renames its hash, keeping data and expiry. Without
-- a grace period the old key is gone at once (`cycle_id`); with one (periodic
-- renewal) it becomes an alias for that long: fields m:r (the new key) and
-- m:x (the new id sealed with the old one, opened only by its holders).
-- KEYS[1]  the current session hash
-- KEYS[2]  the hash under the new id (same hash tag, so the same cluster slot)
-- ARGV[1]  grace period, ms (0: none)
-- ARGV[2]  the sealed new id (with a grace period)
-- ARGV[3]  renew only when the current id is at least this old, ms (0: always)
-- ARGV[4]  idle timeout, ms: a rename is a use of the session, and refreshes it
-- Returns {1, user id or '', created ms} | {0} no live session | {-1} the new key exists (id collision)
--       | {-3, new key, sealed id} the session was renewed already (KEYS[1] is an alias)
--       | {2} the id is not that old (a concurrent renewal came first, or the clocks differ)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1}
end
local meta = redis.call('HMGET', KEYS[1], 'm:c', 'm:a', 'm:u', 'm:r', 'm:x', 'm:i')
if meta[4] then
  return {-3, meta[4], meta[5] or ''}
end
if not meta[1] or not meta[2] then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(meta[2]) then
  redis.call('DEL', KEYS[1])
  return {0}
end
-- (Only renewals ask for an age: a clock that went back never stops a cycle.)
local min_age = tonumber(ARGV[3])
if min_age > 0 and now - tonumber(meta[6] or meta[1]) < min_age then
  return {2}
end
local grace = tonumber(ARGV[1])
local ttl = tonumber(ARGV[4])
if tonumber(meta[2]) - now < ttl then
  ttl = tonumber(meta[2]) - now
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'm:s', string.format('%d', now), 'm:i', string.format('%d', now))
redis.call('PEXPIRE', KEYS[2], ttl)
if grace > 0 then
  -- The alias never outlives the session.
  if ttl < grace then
    grace = ttl
  end
  redis.call('HSET', KEYS[1], 'm:r', KEYS[2], 'm:x', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], grace)
end
return {1, meta[3] or '', tonumber(meta[1])}
