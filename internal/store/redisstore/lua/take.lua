-- Take. ARGV[3] mode: 'd' delete or 'p' pending; ARGV[4] how many expired
-- messages one call may remove before it hands back to the caller.
-- Returns {id, record}, {} for nothing, or {'more'} to be called again.
local mode, budget = ARGV[3], tonumber(ARGV[4])
if mode == 'p' and uses('p') then
  for _, l in ipairs(redis.call('ZRANGE', P, 0, -1)) do
    local id = unlex(l)
    local rec = redis.call('HGET', M, id)
    if not rec then
      redis.call('ZREM', P, l)
    elseif not expired((hdr(rec))) then
      return {id, rec}
    end
  end
end
local haspend = uses('p') and redis.call('ZCARD', P) > 0
local out, more = nil, false
scan(function(id, src)
  local rec = redis.call('HGET', M, id)
  if not rec then
    drop_index(id, src)
    return false
  end
  local exp, til, dk = hdr(rec)
  local pend = haspend and redis.call('ZSCORE', P, lex(id))
  if expired(exp) then
    remove(id, exp, src)
    forget(id, til, dk, false)
    budget = budget - 1
    if budget <= 0 then
      more = true
      return true
    end
    return false
  end
  if pend then return false end
  if mode == 'p' then
    redis.call('ZADD', P, 0, lex(id))
    touch(P)
    dirty = true
  else
    remove(id, exp, src, true)
  end
  forget(id, til, dk, true)
  out = {id, rec}
  return true
end)
finish()
if out then return out end
if more then return {'more'} end
return {}
