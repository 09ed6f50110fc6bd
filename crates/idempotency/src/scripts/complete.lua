-- Stores the response, only if this attempt (fencing token ARGV[1]) still owns the record.
-- KEYS[1] record hash. ARGV[2] status, ARGV[3] headers, ARGV[4] body, ARGV[5] retention ms.
-- Returns 1 when stored, 0 when a later attempt took over.
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'done', 'status', ARGV[2], 'hdrs', ARGV[3], 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
