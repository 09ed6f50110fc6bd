-- Gives back the permit of token ARGV[1] in KEYS[1]. Returns 1 if it was held.
return redis.call('ZREM', KEYS[1], ARGV[1])
