-- Directory Register. KEYS[1] sorted set addr -> expiry ms.
-- ARGV[3] addr, [4] TTL ms.
local D = KEYS[1]
redis.call('ZREMRANGEBYSCORE', D, '-inf', now)
redis.call('ZADD', D, now + tonumber(ARGV[4]), ARGV[3])
local last = redis.call('ZRANGE', D, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', D, math.max(tonumber(last[2]) - now, 0) + margin)
return 1
