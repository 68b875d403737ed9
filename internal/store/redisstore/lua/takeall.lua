-- TakeAll. ARGV[3] most messages to take (0: all).
-- Returns {id1, record1, id2, record2, ...}.
local max = tonumber(ARGV[3])
local out = {}
scan(function(id, src)
  local rec = redis.call('HGET', M, id)
  if not rec then
    drop_index(id, src)
    return false
  end
  if uses('p') and redis.call('ZSCORE', P, lex(id)) then return false end
  local exp, til, dk = hdr(rec)
  remove(id, exp, src, true)
  if expired(exp) then
    forget(id, til, dk, false)
    return false
  end
  forget(id, til, dk, true)
  out[#out + 1] = id
  out[#out + 1] = rec
  return max > 0 and #out >= 2 * max
end)
finish()
return out
