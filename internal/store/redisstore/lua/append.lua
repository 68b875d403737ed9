-- Append. ARGV[3] record, [4] dedup key, [5] expires ms (0: never),
-- [6] limit, [7] max length, [8] '1' to leave a queued message with the
-- dedup key as it is (the first send wins), [9] most dedup keys of
-- delivered messages to remember (0: no bound; kept in H.c), [10] the
-- wake channel and [11] the queue's key, published there when a waiter
-- is parked.
-- Returns {kind, id, len, trimmed}: kind 0 appended, 1 duplicate (id: the
-- message it matched), 2 full.
local rec, dk, exp = ARGV[3], ARGV[4], int(ARGV[5])
local limit, maxlen = int(ARGV[6]), int(ARGV[7])
local keepfirst, bound = ARGV[8] == '1', int(ARGV[9])
if bound > 0 then
  if bound ~= dmax then
    redis.call('HSET', H, 'c', bound)
    dmax = bound
  end
  cap_seen()
end
if dk ~= '' then
  forget_windows()
  local qid = redis.call('HGET', K, dk)
  local old = qid and record(qid)
  if old then
    local oexp, otil = hdr(old)
    local l = lex(qid)
    local ls, pend = leaseof(l), pendof(l)
    if not expired(oexp) and ls and not over(ls) then
      -- Being handed out: left as it is.
      return {1, qid, qlen(), 0}
    end
    if not expired(oexp) and (ls or not pend) then
      -- Queued: replace content and expiry in place, unless the first wins.
      if not keepfirst then
        redis.call('HSET', M, qid, set_head(rec, exp, otil))
        touch(M, 'o')
        if oexp == 0 and exp > 0 then dforever, dexp = -1, 1 elseif oexp > 0 and exp == 0 then dforever, dexp = 1, -1 end
        if exp > 0 then need(exp) end
        dirty = true
        finish()
      end
      return {1, qid, qlen(), 0}
    end
  end
  local til = qid and redis.call('ZSCORE', W, dk)
  if til and now < tonumber(til) then
    finish()
    return {1, qid, qlen(), 0}
  end
end
local n = qlen()
if limit > 0 and n >= limit then return {2, '', n, 0} end
local id = xadd(S, nil, 'r', rec)
touch(S, 's')
if exp == 0 then dforever = dforever + 1 else need(exp); dexp = dexp + 1 end
if dk ~= '' then
  redis.call('HSET', K, dk, id)
  touch(K, 'k')
  redis.call('ZREM', W, dk)
end
dirty = true
n = n + 1
local trimmed = 0
if maxlen > 0 then n, trimmed = trim(n, maxlen) end
wake(ARGV[10], ARGV[11])
finish()
return {0, id, n, trimmed}
