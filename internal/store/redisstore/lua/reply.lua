-- Reply. KEYS[9] the reply's key. ARGV[3] id, [4] reply record,
-- [5] reply TTL ms (0: kept until taken). Returns 1 when stored.
local id, rrec, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local l = lex(id)
if not pendof(l) then return 0 end
-- Taken in pending mode, its lease ran out: queued, not pending.
local ls = leaseof(l)
if ls and over(ls) then return 0 end
local rec, inm = record(id)
if not rec then
  redis.call('ZREM', P, l)
  return 0
end
local exp, til, dk = hdr(rec)
remove(id, exp, nil, false, inm)
forget(id, til, dk, true)
if ttl > 0 then
  redis.call('SET', KEYS[9], rrec, 'PX', ttl + margin)
else
  redis.call('SET', KEYS[9], rrec)
end
finish()
return 1
