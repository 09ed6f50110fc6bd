-- Sets the expiry of the lock KEYS[1] to ARGV[2] ms from now, only if it
-- still holds our token ARGV[1]. Returns 1 when extended, 0 when not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
