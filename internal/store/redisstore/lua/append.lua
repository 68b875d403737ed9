-- Append. ARGV[3] record, [4] dedup key, [5] expires ms (0: never),
-- [6] limit, [7] max length, [8] most remembered dedup keys (0: no bound).
-- Returns {kind, id, len, trimmed}: kind 0 appended, 1 duplicate, 2 full.
local rec, dk, exp = ARGV[3], ARGV[4], tonumber(ARGV[5])
local limit, maxlen, dedupmax = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if dk ~= '' then
  if uses('w') then redis.call('ZREMRANGEBYSCORE', W, '-inf', now) end
  local qid = redis.call('HGET', K, dk)
  if qid then
    local old = redis.call('HGET', M, qid)
    if old then
      local oexp, otil = hdr(old)
      if not expired(oexp) then
        -- Still queued: replace content and expiry in place.
        redis.call('HSET', M, qid, set_head(rec, exp, otil))
        touch(M)
        if oexp == 0 and exp > 0 then dforever = -1 elseif oexp > 0 and exp == 0 then dforever = 1 end
        if exp > 0 then need(exp) end
        dirty = true
        finish()
        return {1, qid, qlen(), 0}
      end
    else
      redis.call('HDEL', K, dk)
    end
  end
  local til = redis.call('ZSCORE', W, dk)
  if til and now < tonumber(til) then return {1, '', qlen(), 0} end
end
local n = qlen()
if limit > 0 and n >= limit then return {2, '', n, 0} end
local id = xadd(S, nil, 'd', '')
redis.call('HSET', M, id, rec)
touch(S)
touch(M)
if exp == 0 then dforever = dforever + 1 else need(exp) end
if dk ~= '' then
  redis.call('HSET', K, dk, id)
  touch(K)
  redis.call('ZREM', W, dk)
end
if dedupmax > 0 and uses('w') then
  -- Remembered keys beyond the bound: those whose windows end first go.
  local over = redis.call('ZCARD', W) - dedupmax
  if over > 0 then redis.call('ZPOPMIN', W, over) end
end
dirty = true
n = n + 1
local trimmed = 0
if maxlen > 0 and n > maxlen then
  scan(function(tid, src)
    local trec = redis.call('HGET', M, tid)
    if trec then
      local texp, ttil, tdk = hdr(trec)
      remove(tid, texp, src)
      forget(tid, ttil, tdk, false)
    else
      drop_index(tid, src)
    end
    trimmed = trimmed + 1
    n = n - 1
    return n <= maxlen
  end)
end
finish()
return {0, id, n, trimmed}
