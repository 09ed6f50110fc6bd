-- Deletes a session hash. KEYS[1] the session hash.
-- Returns {1 if it existed else 0, user id or ''}.
local user = redis.call('HGET', KEYS[1], 'm:u')
local n = redis.call('DEL', KEYS[1])
return {n, user or ''}
