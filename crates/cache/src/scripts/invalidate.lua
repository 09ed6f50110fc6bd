-- Invalidates a cached response (a purge, or an unsafe request's target):
-- deletes every variant and bumps the entry's generation (field `gen`), so
-- that a fill that looked the key up before (on any instance) does not store
-- the response it fetched, which may be older than the change. The hash is
-- left holding only `gen`, for ARGV[1] ms (also when nothing was stored: a
-- fill may be on its way). Another key (a cache-aside value, also under a
-- purged tag: ARGV[2] is not '1') is only deleted.
-- KEYS[1] the entry hash; ARGV[2] '1' for an entry key.
-- Returns 1 when something was stored there.
local kind = redis.call('TYPE', KEYS[1]).ok
if ARGV[2] ~= '1' or (kind ~= 'hash' and kind ~= 'none') then
  return redis.call('DEL', KEYS[1])
end
local stored = redis.call('HEXISTS', KEYS[1], 'vary')
local gen = (tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', string.format('%d', gen))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return stored
