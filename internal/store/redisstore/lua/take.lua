-- Take under a lease. ARGV[3] mode: 'd' delete or 'p' pending; ARGV[4] how
-- many expired messages one call may remove before it hands back to the
-- caller; ARGV[5] the lease token (score in L); ARGV[6] the instant (ms)
-- until which the caller waits when it finds nothing (0: it does not).
-- Returns {id, record, token} ('0': a pending message handed out again,
-- with nothing to settle), {} for nothing, or {'more'} to be called again.
local mode, budget, token, til = ARGV[3], ARGV[4], ARGV[5], int(ARGV[6] or '0')
if mode == 'p' and uses('p') then
  for _, l in ipairs(redis.call('ZRANGE', P, 0, -1)) do
    local id = unlex(l)
    local rec = record(id)
    local ls = leaseof(l)
    if not rec then
      redis.call('ZREM', P, l)
    elseif ls and over(ls) then
      -- A pending-mode lease that ran out: queued again.
      redis.call('ZREM', P, l)
      redis.call('ZREM', L, l)
      dirty = true
    elseif not expired((hdr(rec))) then
      finish()
      return {id, rec, '0'}
    end
  end
end
local out
local more = takeable(budget, function(id, rec, l)
  redis.call('ZADD', L, token, l)
  touch(L, 'l')
  if mode == 'p' then
    redis.call('ZADD', P, 0, l)
    touch(P, 'p')
  end
  dirty = true
  out = {id, rec, token}
  return true
end)
if not out and not more and til > 0 then park(til) end
finish()
if out then return out end
if more then return {'more'} end
return {}
