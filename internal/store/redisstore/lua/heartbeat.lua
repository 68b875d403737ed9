-- Directory Heartbeat. KEYS[1] sorted set node id -> expiry ms, KEYS[2]
-- hash node id -> addr. ARGV[3] id, [4] addr, [5] TTL ms (<= 0: the node
-- leaves at once).
local Z, A = KEYS[1], KEYS[2]
for _, id in ipairs(redis.call('ZRANGE', Z, '-inf', fmt(now), 'BYSCORE')) do
  redis.call('HDEL', A, id)
end
redis.call('ZREMRANGEBYSCORE', Z, '-inf', now)
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('ZADD', Z, now + ttl, ARGV[3])
  redis.call('HSET', A, ARGV[3], ARGV[4])
else
  redis.call('ZREM', Z, ARGV[3])
  redis.call('HDEL', A, ARGV[3])
end
local last = redis.call('ZRANGE', Z, -1, -1, 'WITHSCORES')
if #last > 0 then
  local keep = math.max(tonumber(last[2]) - now, 0) + margin
  redis.call('PEXPIRE', Z, keep)
  redis.call('PEXPIRE', A, keep)
end
return 1
