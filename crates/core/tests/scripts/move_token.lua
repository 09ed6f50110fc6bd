-- Moves a token from KEYS[1] to KEYS[2] atomically; returns the new count in KEYS[2].
-- Both keys must share a cluster slot (the key builder gives them one hash tag).
local taken = redis.call('DECR', KEYS[1])
if taken < 0 then
  redis.call('INCR', KEYS[1])
  return -1
end
return redis.call('INCR', KEYS[2])
