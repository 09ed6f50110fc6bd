-- Called by the holder of the in-flight lease (a redlayer lock) of this key.
-- KEYS[1] record hash. ARGV[1] request fingerprint, ARGV[2] the lease's fencing token,
-- ARGV[3] retention ms.
-- Returns {'run'} (the caller runs the handler), {'mismatch'} (same key, other
-- request) or {'done', status, headers, body} (replay).
local rec = redis.call('HMGET', KEYS[1], 'st', 'fp')
if rec[1] then
  if rec[2] ~= ARGV[1] then return {'mismatch'} end
  if rec[1] == 'done' then
    local r = redis.call('HMGET', KEYS[1], 'status', 'hdrs', 'body')
    return {'done', r[1], r[2], r[3]}
  end
end
-- Absent, or an earlier attempt that never completed (its lease is gone, or we
-- would not hold it): this attempt takes over, fenced by its token.
redis.call('HSET', KEYS[1], 'st', 'run', 'fp', ARGV[1], 'fence', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'run'}
