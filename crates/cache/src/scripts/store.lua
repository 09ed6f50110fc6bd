-- Stores one variant of a cached response.
-- KEYS[1] the entry hash; ARGV[1] normalized uri, ARGV[2] vary spec,
-- ARGV[3] variant field, ARGV[4] encoded entry, ARGV[5] ttl in ms,
-- ARGV[6] the most variants kept (a new variant beyond it replaces one),
-- ARGV[7] the generation the fill's lookup saw ('' for none to check).
-- A response is not stored once the entry was invalidated since that lookup
-- (its `gen` bumped by invalidate.lua): it may be older than the change.
-- A different Vary spec replaces every stored variant. The key lives as long
-- as its longest-lived variant. A stored response clears the hit-for-pass
-- marker (field `pass`). Returns 1 when stored, 0 when refused.
local gen = redis.call('HGET', KEYS[1], 'gen')
if ARGV[7] ~= '' and (gen or '0') ~= ARGV[7] then
  return 0
end
local spec = redis.call('HGET', KEYS[1], 'vary')
if spec and spec ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  if gen then
    redis.call('HSET', KEYS[1], 'gen', gen)
  end
end
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then
  -- Variant fields are the ones named v:...; the others are uri, vary, pass, gen.
  local variants = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 'v:' then variants[#variants + 1] = field end
  end
  local max = tonumber(ARGV[6])
  local i = 1
  while #variants - i + 1 >= max do
    redis.call('HDEL', KEYS[1], variants[i])
    i = i + 1
  end
end
redis.call('HSET', KEYS[1], 'uri', ARGV[1], 'vary', ARGV[2], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[1], 'pass')
local ttl = tonumber(ARGV[5])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
