-- Called when the in-flight lease of this key is held by someone else.
-- KEYS[1] record hash. ARGV[1] request fingerprint.
-- Returns {'busy'}, {'mismatch'} or {'done', status, headers, body}.
local rec = redis.call('HMGET', KEYS[1], 'st', 'fp')
if not rec[1] then return {'busy'} end
if rec[2] ~= ARGV[1] then return {'mismatch'} end
if rec[1] == 'done' then
  local r = redis.call('HMGET', KEYS[1], 'status', 'hdrs', 'body')
  return {'done', r[1], r[2], r[3]}
end
return {'busy'}
