-- Deletes a session hash. KEYS[1] the session hash.
-- Returns {1 if it existed else 0, user id or ''}; for the alias of a renewed
-- session (see cycle.lua), deleted too: {-3, new key, sealed id}.
local meta = redis.call('HMGET', KEYS[1], 'm:u', 'm:r', 'm:x')
local n = redis.call('DEL', KEYS[1])
if meta[2] then
  return {-3, meta[2], meta[3] or ''}
end
return {n, meta[1] or ''}
