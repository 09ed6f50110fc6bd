-- Forgets an attempt whose response cannot be replayed (5xx, too large),
-- only if this attempt (fencing token ARGV[1]) still owns the running record.
-- KEYS[1] record hash. Returns 1 when deleted.
local rec = redis.call('HMGET', KEYS[1], 'st', 'fence')
if rec[1] == 'run' and rec[2] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
