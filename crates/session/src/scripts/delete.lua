-- Ends a session by key (revocation through a user's index): deletes KEYS[1]
-- and, when it is the alias a renewal left (see cycle.lua), the session it
-- leads to, so a session renewed since its key was listed still ends. Every
-- key of the chain shares KEYS[1]'s hash tag, so its cluster slot.
-- Returns 1 when a live session was deleted, else 0.
local key = KEYS[1]
local ended = 0
for _ = 1, 16 do
  local meta = redis.call('HMGET', key, 'm:c', 'm:r')
  redis.call('DEL', key)
  if meta[1] then
    ended = 1
  end
  if not meta[2] then
    break
  end
  key = meta[2]
end
return ended
