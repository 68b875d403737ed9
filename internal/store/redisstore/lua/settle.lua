-- Settle leases. ARGV[3] '1' delivered or '0' not; then triples from
-- ARGV[4]: id, lease token, mode ('d' or 'p').
-- Delivered: a message under that lease, or free (queued, or its lease ran
-- out), is removed ('d') or pending from then on ('p'), and its dedup key
-- remembered. Not delivered: a message still under that lease is queued
-- again. Returns 1.
local delivered = ARGV[3] == '1'
for i = 4, #ARGV, 3 do
  local id, token, mode = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local l = lex(id)
  local rec = redis.call('HGET', M, id)
  local ls = rec and leaseof(l)
  local mine = ls and tonumber(ls) == token
  if rec and not delivered then
    if mine then
      redis.call('ZREM', L, l)
      if mode == 'p' then redis.call('ZREM', P, l) end
      dirty = true
    end
  elseif rec and (mine or (ls and over(ls)) or (not ls and not pendof(l))) then
    local exp, til, dk = hdr(rec)
    if mode == 'd' then
      remove(id, exp, nil)
    else
      if ls then redis.call('ZREM', L, l) end
      redis.call('ZADD', P, 0, l)
      touch(P)
    end
    forget(id, til, dk, true)
  end
end
finish()
return 1
