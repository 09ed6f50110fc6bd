-- Applies one request's changes to a session hash, atomically, with its expiry.
-- Times are written with string.format('%d'): Redis would write a Lua number
-- with many trailing zeros in exponent form, which the Rust side cannot parse.
-- KEYS[1]  the session hash
-- ARGV[1]  'n': create (the key must not exist) | 'e': update (the key must exist)
-- ARGV[2]  idle timeout, ms
-- ARGV[3]  absolute lifetime, ms (used when creating)
-- ARGV[4]  '1': delete every data field first (clear)
-- ARGV[5]  '' or the user id to record
-- ARGV[6], ARGV[7], ARGV[8]  number of deletions, sets, increments
-- ARGV[9]  touch interval, ms: an update within it of the last refresh leaves
--          the idle expiry (and m:s) as they are, as a read does (touch.lua)
-- then the deleted fields, the (field, value) pairs set, the (field, by) increments.
-- Returns {1, created_ms, ms since the id was issued, increment results...} | {0} no live session (never recreated)
--       | {-1} the key exists (id collision on create) | {-2, field} field is not an integer
--       | {-3, new key, sealed id} the session was renewed (KEYS[1] is an alias, see cycle.lua)
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local create = ARGV[1] == 'n'
local created, deadline, issued, seen
if create then
  if redis.call('EXISTS', key) == 1 then
    return {-1}
  end
  created = now
  issued = now
  deadline = now + tonumber(ARGV[3])
else
  local meta = redis.call('HMGET', key, 'm:c', 'm:a', 'm:r', 'm:x', 'm:i', 'm:s')
  if meta[3] then
    return {-3, meta[3], meta[4] or ''}
  end
  if not meta[1] or not meta[2] then
    return {0}
  end
  created = tonumber(meta[1])
  deadline = tonumber(meta[2])
  issued = tonumber(meta[5] or meta[1])
  seen = tonumber(meta[6] or '')
  if now >= deadline then
    redis.call('DEL', key)
    return {0}
  end
end
local clear = ARGV[4] == '1'
local nd, ns, ni = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local dels, sets = {}, {}
local i = 10
for _ = 1, nd do
  dels[ARGV[i]] = true
  i = i + 1
end
local set_start = i
for _ = 1, ns do
  sets[ARGV[i]] = ARGV[i + 1]
  i = i + 2
end
local incr_start = i
-- A lone increment of a stored field (the usual case) runs first: a refusal
-- has then written nothing, without reading the field beforehand.
local early
if ni == 1 and not create and not clear and sets[ARGV[i]] == nil and not dels[ARGV[i]] then
  early = redis.pcall('HINCRBY', key, ARGV[i], ARGV[i + 1])
  if type(early) == 'table' and early.err then
    return {-2, ARGV[i]}
  end
  ni = 0
end
-- Check every increment before writing anything, so that a refusal writes
-- nothing: the value must be what HINCRBY takes (a 64-bit integer written
-- without leading zeros or "-0"), and the sum must stay within 64 bits (to
-- within a double's precision, so a sum at the very edge is refused too).
for j = 0, ni - 1 do
  local f = ARGV[incr_start + 2 * j]
  local v = sets[f]
  if v == nil and not dels[f] and not clear and not create then
    v = redis.call('HGET', key, f)
  end
  local n = 0
  if v then
    if v ~= '0' and (#v > 20 or not string.match(v, '^%-?[1-9]%d*$')) then
      return {-2, f}
    end
    n = tonumber(v)
  end
  if math.abs(n + tonumber(ARGV[incr_start + 2 * j + 1])) >= 9.2233720368547e18 then
    return {-2, f}
  end
end
if clear and not create then
  local names = redis.call('HKEYS', key)
  for _, f in ipairs(names) do
    if string.sub(f, 1, 2) == 'f:' then
      redis.call('HDEL', key, f)
    end
  end
end
for f, _ in pairs(dels) do
  redis.call('HDEL', key, f)
end
if create then
  redis.call('HSET', key, 'm:c', string.format('%d', now), 'm:a', string.format('%d', deadline))
end
-- Refreshed within the touch interval: the idle expiry stays (see ARGV[9]).
local refresh = create or seen == nil or now - seen >= tonumber(ARGV[9])
if refresh then
  redis.call('HSET', key, 'm:s', string.format('%d', now))
end
for j = 0, ns - 1 do
  redis.call('HSET', key, ARGV[set_start + 2 * j], ARGV[set_start + 2 * j + 1])
end
if ARGV[5] ~= '' then
  redis.call('HSET', key, 'm:u', ARGV[5])
end
local out = {1, created, now - issued}
if early then
  out[4] = early
end
for j = 0, ni - 1 do
  local r = redis.pcall('HINCRBY', key, ARGV[incr_start + 2 * j], ARGV[incr_start + 2 * j + 1])
  if type(r) == 'table' and r.err then
    return {-2, ARGV[incr_start + 2 * j]}
  end
  out[#out + 1] = r
end
if refresh then
  local ttl = tonumber(ARGV[2])
  if deadline - now < ttl then
    ttl = deadline - now
  end
  redis.call('PEXPIRE', key, ttl)
end
return out
