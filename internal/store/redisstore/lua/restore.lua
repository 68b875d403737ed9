-- Restore. ARGV[3] id, [4] record, [5] expires ms, [6] dedup key.
-- Returns 1 when the message was put back.
local id, rec, exp, dk = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
if expired(exp) then return 0 end
if redis.call('HEXISTS', M, id) == 1 then return 0 end
local til = 0
if dk ~= '' and not redis.call('HGET', K, dk) then
  redis.call('HSET', K, dk, id)
  touch(K)
  local t = redis.call('ZSCORE', W, dk)
  if t then
    til = tonumber(t)
    redis.call('ZREM', W, dk)
  end
end
redis.call('HSET', M, id, set_head(rec, exp, til))
redis.call('ZADD', B, 0, lex(id))
touch(M)
touch(B)
if exp == 0 then dforever = 1 else need(exp) end
dirty = true
finish()
return 1
