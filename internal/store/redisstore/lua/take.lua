-- Take under a lease. ARGV[3] mode: 'd' delete or 'p' pending; ARGV[4] how
-- many expired messages one call may remove before it hands back to the
-- caller; ARGV[5] the lease token (score in L); ARGV[6] the instant (ms)
-- until which the caller waits when it finds nothing (0: it does not);
-- ARGV[7] the id of a message a lean take (lean.go) read past the stream
-- group's cursor and did not hand out ('' or absent: none), scored as a
-- lease run out when it is neither leased nor pending, so that lean takes
-- leave it to this function, which hands it out in its place; ARGV[8]
-- '1' when the lean take found no consumer group on the stream, which
-- this function then creates; ARGV[9] the group consumer the lean take
-- made ('' or absent: none), deleted first, with the lease it holds;
-- ARGV[10] the lease token to use instead of ARGV[5] when the message
-- handed out may be settled with plain commands ('' or absent: none): a
-- delete-mode take of a stream entry whose record is there, without
-- expiry or dedup key, whose settling is then XDEL and ZREM of L (see
-- lean.go).
-- Returns {id, record, token} (the token used; '0': a pending message
-- handed out again, with nothing to settle), {} for nothing, or {'more'}
-- to be called again.
local mode, budget, token, til = ARGV[3], ARGV[4], ARGV[5], int(ARGV[6] or '0')
local plaintoken = ARGV[10] or ''
local past = ARGV[7] or ''
if (ARGV[9] or '') ~= '' then
  -- The consumer of the lean take that left this take to the function.
  redis.pcall('XGROUP', 'DELCONSUMER', S, GROUP, ARGV[9])
  pel = nil
end
if ARGV[8] == '1' and not group_cursor() and redis.call('EXISTS', S) == 1 then
  -- The lean path found no consumer group: it starts past every message
  -- handed out (leased or pending); free messages before that are left
  -- to this function.
  local top = lex('0-0')
  if uses('l') then
    for _, l in ipairs(redis.call('ZRANGE', L, 0, -1)) do
      if l > top then top = l end
    end
  end
  if uses('p') then
    local p = redis.call('ZRANGE', P, -1, -1)
    if p[1] and p[1] > top then top = p[1] end
  end
  redis.call('XGROUP', 'CREATE', S, GROUP, unlex(top))
  cursor = top
end
if past ~= '' then
  local l = lex(past)
  if not leaseof(l) and not pendof(l) and record(past) then
    redis.call('ZADD', L, 0, l)
    touch(L, 'l')
    dirty = true
  end
end
if mode == 'p' and uses('p') then
  for _, l in ipairs(redis.call('ZRANGE', P, 0, -1)) do
    local id = unlex(l)
    local rec = record(id)
    local ls = leaseof(l)
    if not rec then
      redis.call('ZREM', P, l)
    elseif ls and over(ls) then
      -- A pending-mode lease that ran out: queued again. Its lease
      -- stays, run out, so that lean takes leave it to this function.
      redis.call('ZREM', P, l)
      dirty = true
    elseif not expired((hdr(rec))) then
      finish()
      return {id, rec, '0'}
    end
  end
end
drop_stale_leases()
local out
local more = takeable(budget, function(id, rec, l, src, inm)
  local tok = token
  if plaintoken ~= '' and mode == 'd' and src == 's' and not inm and string.sub(rec, 1, 6) == '0,0,0:' then
    tok = plaintoken
  end
  redis.call('ZADD', L, tok, l)
  touch(L, 'l')
  if mode == 'p' then
    redis.call('ZADD', P, 0, l)
    touch(P, 'p')
  end
  dirty = true
  out = {id, rec, tok}
  return true
end)
if not out and not more then
  reset_forever()
  if til > 0 then park(til) end
end
finish()
if out then return out end
if more then return {'more'} end
return {}
