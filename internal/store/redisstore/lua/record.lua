-- Record. ARGV[3] content type, [4] body, [5] most entries kept,
-- [6] TTL ms (0: until trimmed). Returns the new entry's id.
local ct, body, maxlen, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if maxlen < 1 then maxlen = 1 end
expire_front()
local over = redis.call('XLEN', HS) + 1 - maxlen
if over > 0 then
  local es = redis.call('XRANGE', HS, '-', '+', 'COUNT', over)
  redis.call('HSET', HM, 'd', es[#es][1])
end
local exp = 0
if ttl > 0 then exp = now + ttl end
local id = xadd(HS, maxlen, 'x', fmt(exp), 't', ct, 'b', body)
if ttl <= 0 then redis.call('HSET', HM, 'f', id) end
-- Redis TTLs only collect garbage: the history lives for ever while an
-- entry without expiry is kept, else as long as its longest-lived entry.
local f = redis.call('HGET', HM, 'f')
if f and #redis.call('XRANGE', HS, f, f) > 0 then
  redis.call('PERSIST', HS)
  redis.call('PERSIST', HM)
else
  local want = ttl + margin
  local cur = redis.call('PTTL', HS)
  if cur < 0 or cur < want then
    redis.call('PEXPIRE', HS, want)
    redis.call('PEXPIRE', HM, want)
  end
end
return id
