-- Ends a session: deletes KEYS[1] and, when it is the alias a renewal left
-- (see cycle.lua), the keys it leads to, so a session renewed since its key
-- was read (a logout with the old id, a revocation through the user's index)
-- still ends. Every key of the chain shares KEYS[1]'s hash tag, so its slot.
-- Returns {1 when a live session was deleted else 0, its user or '', its key}.
local key = KEYS[1]
for _ = 1, 16 do
  local meta = redis.call('HMGET', key, 'm:c', 'm:u', 'm:r')
  redis.call('DEL', key)
  if not meta[3] then
    return {meta[1] and 1 or 0, meta[2] or '', key}
  end
  key = meta[3]
end
return {0, '', key}
