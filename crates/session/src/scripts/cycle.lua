-- Gives a session a new id: renames its hash, keeping data and expiry; the old key is gone at once.
-- KEYS[1]  the current session hash
-- KEYS[2]  the hash under the new id (same hash tag, so the same cluster slot)
-- Returns {1, user id or '', created ms} | {0} no live session | {-1} the new key exists (id collision)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1}
end
local meta = redis.call('HMGET', KEYS[1], 'm:c', 'm:a', 'm:u')
if not meta[1] or not meta[2] then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(meta[2]) then
  redis.call('DEL', KEYS[1])
  return {0}
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'm:s', string.format('%d', now))
return {1, meta[3] or '', tonumber(meta[1])}
