-- Part of the library for the queue functions (after base.lua); qbegin
-- starts each call. Each operation is one function, so it is atomic.
--
-- KEYS[1] S  stream: one entry per appended message, in id order (its
--            last id keeps ids increasing after the queue empties),
--            holding the message's record (header, dedup key, content
--            type, body) in field r; older versions wrote an empty field d
--            and the record in M
-- KEYS[2] M  hash id -> record: a record replaced in place (by a dedup
--            key; u holds 'o' once one was), and the records of older
--            versions' entries
-- KEYS[3] P  sorted set (lex, score 0) of pending ids
-- KEYS[4] B  sorted set (lex, score 0) of restored ids: messages put back
--            at their id position, which a stream cannot take
-- KEYS[5] K  hash dedup key -> id of the queued message carrying it
-- KEYS[6] W  sorted set dedup key -> end of its window (ms): keys of
--            messages handed out, remembered until then
-- KEYS[7] H  hash of queue meta: f = messages without expiry,
--            g = latest instant (ms) any stored data is needed until
-- KEYS[8] L  sorted set of leased ids (lex), scored by their lease token:
--            the lease's deadline (ms) times 1000 plus a number the node
--            chose; a message under a lease stays in its place (stream or
--            restored set), and in P too when it was taken in pending mode
--
-- K keeps the id of the message of each dedup key while the message is
-- queued or leased, and, once it was delivered, for as long as W
-- remembers the key, so that a repeat is told the id.
local S, M, P, B, K, W, H, L
local gcneed, dforever, dirty
-- x0 + dexp is the count of messages with an expiry (H.x), known when
-- xknown: queues of older versions have no H.x until they are empty. The
-- lean path (lean.go) takes only from queues known to hold none.
local x0, dexp, xknown, xhad

-- The meta hash H, read once per call: f = messages without expiry,
-- g = latest instant (ms) any stored data is needed until, e = the TTL
-- deadline applied to the keys (ms; -1: persisted), u = letters of the
-- optional keys (p, b, k, w, l) that may exist, c = most dedup keys of
-- delivered messages W keeps (0: no bound), w = the instant (ms) until
-- which a waiter is parked on the queue on some node (see park and
-- wake). Keys not in u are neither read nor given TTLs, which keeps the
-- common calls to a few commands. u holds 'n' when the queue was created
-- by this version: its stream has no entries of older versions, whose
-- records are in M. qbegin (at the end) reads it.
local forever0, g0, e0, used, dmax, parked0, parked, newused
local function uses(c) return string.find(used, c, 1, true) ~= nil end

-- The optional keys and their letters in H.u.
local function optional() return {[P] = 'p', [B] = 'b', [K] = 'k', [W] = 'w', [L] = 'l', [M] = 'o'} end

-- touched holds the letters of the keys written ('s' for S; Lua keeps
-- one copy of each short string, so growing it allocates little), which
-- finish gives the current TTL; touch(k, c) records key k of letter c.
local touched
local function touch(k, c)
  if not string.find(touched, c, 1, true) then touched = touched .. c end
  if c ~= 's' and not uses(c) then
    used = used .. c
    newused = true
  end
end

-- A record starts "<expires ms>,<dedup until ms>,<dedup key length>:<dedup key>".
local function hdr(rec)
  local a = string.find(rec, ',', 1, true)
  local b = string.find(rec, ',', a + 1, true)
  local c = string.find(rec, ':', b + 1, true)
  local n = tonumber(string.sub(rec, b + 1, c - 1))
  return tonumber(string.sub(rec, 1, a - 1)), tonumber(string.sub(rec, a + 1, b - 1)), string.sub(rec, c + 1, c + n)
end
local function set_head(rec, exp, til)
  local a = string.find(rec, ',', 1, true)
  local b = string.find(rec, ',', a + 1, true)
  return fmt(exp) .. ',' .. fmt(til) .. string.sub(rec, b)
end
local function expired(exp) return exp > 0 and now >= exp end
-- over reports whether the lease scored ls has run out.
local function over(ls) return tonumber(ls) < (now + 1) * 1000 end
-- The stream's consumer group, through which the lean path (lean.go)
-- hands out new entries: every entry past its cursor (last delivered id)
-- was never handed out, so a function that hands one out moves the cursor
-- past it (see takeable). An entry the lean path holds is pending in the
-- group, owned by a consumer named after the lease token ("<token>:<node>"),
-- which is its lease. Read once per call, when needed: the cursor (lex;
-- false: no group) and the group's pending entries (lex -> consumer).
local GROUP = 'postern'
local cursor, pel
local function group_cursor()
  if cursor == nil then
    cursor = false
    local r = redis.pcall('XINFO', 'GROUPS', S)
    if type(r) == 'table' and not r.err then
      for _, g in ipairs(r) do
        local name, last
        for i = 1, #g - 1, 2 do
          if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
        end
        if name == GROUP and last then cursor = lex(last) end
      end
    end
  end
  return cursor
end
local function pel_load()
  if pel == nil then
    pel = {}
    if group_cursor() then
      for _, e in ipairs(redis.call('XPENDING', S, GROUP, '-', '+', 100000)) do pel[lex(e[1])] = e[2] end
    end
  end
  return pel
end
-- pelof returns the token of the lean path's lease on lex l, or nil.
local function pelof(l)
  local c = pel_load()[l]
  if c then return string.match(c, '^%d+') end
  return nil
end
-- release ends the lean path's lease on lex l, if there is one.
local function release(l)
  local c = pel_load()[l]
  if c then
    redis.call('XGROUP', 'DELCONSUMER', S, GROUP, c)
    pel[l] = nil
    dirty = true
  end
end
-- past_cursor moves the group's cursor to id, handed out by a function,
-- when it is past it.
local function past_cursor(id, l)
  local c = group_cursor()
  if c and l > c then
    redis.call('XGROUP', 'SETID', S, GROUP, id)
    cursor = l
  end
end

local function leaseof(l)
  local ls = uses('l') and redis.call('ZSCORE', L, l)
  if ls then return ls end
  return pelof(l) or false
end
local function pendof(l)
  if uses('p') then return redis.call('ZSCORE', P, l) end
  return false
end
local function need(t) if t > gcneed then gcneed = t end end

local function qlen()
  local n = redis.call('XLEN', S)
  if uses('b') then n = n + redis.call('ZCARD', B) end
  return n
end

-- entry_record returns the record of message id from the fields of its
-- stream entry, and whether it came from M (a replaced record, or an
-- older version's entry).
local function entry_record(id, fields)
  if fields[1] == 'r' then
    if uses('o') then
      local rec = redis.call('HGET', M, id)
      if rec then return rec, true end
    end
    return fields[2], false
  end
  return redis.call('HGET', M, id), true
end

-- record returns the record of message id (nil: there is none), and
-- whether it came from M.
local function record(id)
  local es = redis.call('XRANGE', S, id, id)
  if #es == 1 then return entry_record(id, es[1][2]) end
  if uses('b') then return redis.call('HGET', M, id), true end
  return nil, false
end

-- inm reports whether M may hold message id's record: inm is what
-- record said (nil: unknown).
local function may_be_in_m(inm)
  if inm == nil then return uses('o') or not uses('n') end
  return inm
end

-- remove drops message id from every structure; src is 's' (stream), 'b'
-- (restored) or nil (unknown); notpending skips the pending set; inm as
-- may_be_in_m takes it.
local function remove(id, exp, src, notpending, inm)
  if src == 's' then
    redis.call('XDEL', S, id)
  elseif src == 'b' then
    redis.call('ZREM', B, lex(id))
  elseif redis.call('XDEL', S, id) == 0 and uses('b') then
    redis.call('ZREM', B, lex(id))
  end
  if not notpending and uses('p') then redis.call('ZREM', P, lex(id)) end
  if uses('l') then redis.call('ZREM', L, lex(id)) end
  release(lex(id))
  if may_be_in_m(inm) then redis.call('HDEL', M, id) end
  if exp == 0 then dforever = dforever - 1 else dexp = dexp - 1 end
  dirty = true
end

-- cap_seen forgets, beyond dmax keys of delivered messages, those whose
-- windows end first.
local function cap_seen()
  if dmax <= 0 or not uses('w') then return end
  local excess = redis.call('ZCARD', W) - dmax
  if excess <= 0 then return end
  local old = redis.call('ZPOPMIN', W, excess)
  for i = 1, #old, 2 do redis.call('HDEL', K, old[i]) end
  dirty = true
end

-- forget drops the dedup bookkeeping of a message leaving the queued state;
-- when it was delivered its key is remembered, with the message's id,
-- until the end of its window, and beyond dmax keys the oldest are
-- forgotten.
local function forget(id, til, dk, delivered)
  if dk == '' then return end
  dirty = true
  if not (delivered and til > now) then
    -- A message delivered before (pending) keeps its key for its window.
    if redis.call('HGET', K, dk) == id and not (uses('w') and redis.call('ZSCORE', W, dk)) then
      redis.call('HDEL', K, dk)
    end
    return
  end
  local cur = redis.call('HGET', K, dk)
  if cur and cur ~= id and lex(cur) > lex(id) then
    return -- a newer message carries the key
  end
  redis.call('HSET', K, dk, id)
  redis.call('ZADD', W, til, dk)
  touch(K, 'k')
  touch(W, 'w')
  need(til)
  cap_seen()
end

-- forget_windows forgets the dedup keys whose windows have ended.
local function forget_windows()
  if not uses('w') then return end
  local gone = redis.call('ZRANGEBYSCORE', W, '-inf', now)
  if #gone == 0 then return end
  for _, dk in ipairs(gone) do redis.call('HDEL', K, dk) end
  redis.call('ZREMRANGEBYSCORE', W, '-inf', now)
  dirty = true
end

-- free reports whether the message lex l may be handed out: neither
-- pending nor under a lease that has not run out. A lease that ran out is
-- ended on the way (and a pending-mode one is no longer pending). hasl and
-- hasp say whether L and P may hold anything at all.
local function free(l, hasl, hasp)
  local ls = hasl and redis.call('ZSCORE', L, l)
  if ls then
    if not over(ls) then return false end
    redis.call('ZREM', L, l)
    if hasp then redis.call('ZREM', P, l) end
    dirty = true
    return true
  end
  local ps = pelof(l)
  if ps then
    if not over(ps) then return false end
    release(l)
    return true
  end
  return not (hasp and redis.call('ZSCORE', P, l))
end

-- park records that a waiter is parked on the queue until the instant
-- til (ms), so that the next write that gives it something to take
-- wakes it (see wake). A waiter parks with the take that found nothing,
-- in the same script, so no write can slip in between.
local function park(til)
  if til > parked then
    parked = til
    need(til)
  end
end

-- wake publishes key on channel when a waiter is parked on the queue on
-- any node, and forgets the park: every waiter woken takes again, and
-- parks again if it still finds nothing. With no waiter parked it costs
-- nothing.
local function wake(channel, key)
  if parked > now then
    redis.call('PUBLISH', channel, key)
    parked = 0
  end
end

-- finish sets the Redis TTLs, which only collect garbage: every key of the
-- queue lives at least as long as its longest-lived data plus the margin,
-- and for ever while a message without expiry is queued. The deadline
-- applied is kept in H.e, extended with one margin of headroom, so most
-- scripts set no TTL at all, only those of keys they created.
local function apply_meta()
  local xdirty = xknown and (dexp ~= 0 or not xhad)
  if not dirty and not xdirty and gcneed == 0 and touched == '' and parked == parked0 then return e0 end  local f = forever0 + dforever
  local g = math.max(g0, gcneed)
  local e = e0
  local upd = {}
  if dforever ~= 0 then
    upd[#upd + 1] = 'f'
    upd[#upd + 1] = fmt(f)
  end
  if g > g0 then
    upd[#upd + 1] = 'g'
    upd[#upd + 1] = fmt(g)
  end
  if newused then
    upd[#upd + 1] = 'u'
    upd[#upd + 1] = used
  end
  if parked ~= parked0 then
    upd[#upd + 1] = 'w'
    upd[#upd + 1] = fmt(parked)
  end
  if xdirty then
    upd[#upd + 1] = 'x'
    upd[#upd + 1] = fmt(math.max(x0 + dexp, 0))
  end
  local all = false
  if f > 0 then
    if e ~= -1 then
      e = -1
      all = true
    end
  else
    local want = math.max(g, now) + margin
    if e <= 0 or want > e then
      e = want + margin
      all = true
    end
  end
  if all then
    upd[#upd + 1] = 'e'
    upd[#upd + 1] = fmt(e)
  end
  if #upd > 0 then redis.call('HSET', H, unpack(upd)) end
  if not all then
    if e > 0 then
      for k, c in pairs(optional()) do
        if string.find(touched, c, 1, true) then redis.call('PEXPIRE', k, e - now) end
      end
      if string.find(touched, 's', 1, true) then redis.call('PEXPIRE', S, e - now) end
    end
    return e
  end
  local keys = {S, H}
  if may_be_in_m(nil) then keys[#keys + 1] = M end
  for k, c in pairs(optional()) do
    if uses(c) and k ~= M then keys[#keys + 1] = k end
  end
  for _, k in ipairs(keys) do
    if e == -1 then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, e - now) end
  end
  return e
end

-- finish applies what the script changed to the meta hash and the TTLs.
-- It may run more than once: what it applied becomes the new baseline.
local function finish()
  e0 = apply_meta()
  forever0, dforever = forever0 + dforever, 0
  if xknown then
    x0, dexp, xhad = math.max(x0 + dexp, 0), 0, true
  end
  g0, gcneed = math.max(g0, gcneed), 0
  parked0 = parked
  touched, dirty, newused = '', false, false
end

-- scan visits every message of the queue in id order, merging the stream
-- and the restored set, until visit(id, src, fields) returns true: src
-- 's' with the fields of its stream entry, or 'b'. visit may remove the
-- message it is given.
local function scan(visit)
  local scur, bcur = '-', '-'
  local sbuf, bbuf = {}, {}
  local si, bi = 1, 1
  local sdone, bdone = false, false
  local sbatch = 4
  local function speek()
    if si > #sbuf then
      if sdone then return nil end
      sbuf = redis.call('XRANGE', S, scur, '+', 'COUNT', sbatch)
      si = 1
      if #sbuf < sbatch then sdone = true end
      sbatch = 128
      if #sbuf == 0 then return nil end
      scur = '(' .. sbuf[#sbuf][1]
    end
    return sbuf[si][1], sbuf[si][2]
  end
  if not uses('b') then bdone = true end
  local function bpeek()
    if bi > #bbuf then
      if bdone then return nil end
      bbuf = redis.call('ZRANGE', B, bcur, '+', 'BYLEX', 'LIMIT', 0, 128)
      bi = 1
      if #bbuf < 128 then bdone = true end
      if #bbuf == 0 then return nil end
      bcur = '(' .. bbuf[#bbuf]
    end
    return bbuf[bi]
  end
  while true do
    local sid, sf = speek()
    local bl = bpeek()
    if sid == nil and bl == nil then return end
    local id, src, fields
    if bl == nil or (sid ~= nil and lex(sid) < bl) then
      id, src, fields, si = sid, 's', sf, si + 1
    else
      id, src, bi = unlex(bl), 'b', bi + 1
    end
    if visit(id, src, fields) then return end
  end
end

-- scanned_record is record for a message scan visits.
local function scanned_record(id, src, fields)
  if src == 's' then return entry_record(id, fields) end
  return redis.call('HGET', M, id), true
end

-- drop_index removes an index entry that has no record (never expected).
local function drop_index(id, src)
  if src == 's' then redis.call('XDEL', S, id) else redis.call('ZREM', B, lex(id)) end
  if uses('p') then redis.call('ZREM', P, lex(id)) end
  if uses('l') then redis.call('ZREM', L, lex(id)) end
end

-- trim removes the oldest messages of a queue of n beyond maxlen, and
-- returns the new length and how many it removed.
local function trim(n, maxlen)
  local trimmed = 0
  if n <= maxlen then return n, 0 end
  scan(function(tid, src, fields)
    local trec, inm = scanned_record(tid, src, fields)
    if trec then
      local texp, ttil, tdk = hdr(trec)
      remove(tid, texp, src, false, inm)
      forget(tid, ttil, tdk, false)
    else
      drop_index(tid, src)
    end
    trimmed = trimmed + 1
    n = n - 1
    return n <= maxlen
  end)
  return n, trimmed
end

-- takeable visits messages in order, dropping the expired ones, and calls
-- grant(id, rec, l, src, inm) for each one free to hand out until it
-- returns true (l its lex id, src and inm as scanned_record says). It
-- returns true when it stopped because budget expired messages were
-- removed (the caller asks to be called again).
local function takeable(budget, grant)
  local more = false
  -- L is seldom empty while messages are taken: its ZCARD would only add
  -- a command to the ZSCORE of the message handed out.
  local hasl = uses('l')
  local hasp = uses('p') and redis.call('ZCARD', P) > 0
  local function visit(id, src, fields)
    local rec, inm = scanned_record(id, src, fields)
    if not rec then
      drop_index(id, src)
      return false
    end
    -- Most records start "0,": no expiry, and no strtod to learn it.
    if string.byte(rec, 2) ~= 44 or string.byte(rec, 1) ~= 48 then
      local exp, til, dk = hdr(rec)
      if expired(exp) then
        remove(id, exp, src, false, inm)
        forget(id, til, dk, false)
        budget = budget - 1
        more = budget <= 0
        return more
      end
    end
    local l = lex(id)
    if not free(l, hasl, hasp) then return false end
    past_cursor(id, l)
    return grant(id, rec, l, src, inm)
  end
  if uses('b') then
    scan(visit)
    return more
  end
  -- No restored messages: the stream alone, in growing batches (the
  -- first message is usually free, or behind one or two under a lease).
  local cur, batch = '-', 2
  while true do
    local es = redis.call('XRANGE', S, cur, '+', 'COUNT', batch)
    for i = 1, #es do
      if visit(es[i][1], 's', es[i][2]) then return more end
    end
    if #es < batch then return more end
    cur = '(' .. es[#es][1]
    batch = math.min(batch * 8, 128)
  end
end

-- settle ends the lease token of message id, taken in mode ('d' or 'p'):
-- delivered, a message under that lease, or free (queued, or its lease ran
-- out), is removed ('d') or pending from then on ('p'), and its dedup key
-- remembered; not delivered, a message still under that lease is queued
-- again, and settle returns true.
local function settle(id, token, mode, delivered, cexp)
  local l = lex(id)
  if delivered and mode == 'd' and cexp then
    -- The caller knows the record: its message has no dedup key and
    -- expires at cexp. Under this lease, not run out, it is unchanged.
    local ls = leaseof(l)
    ls = ls and tonumber(ls)
    if ls == token and ls >= (now + 1) * 1000 then
      remove(id, cexp, nil)
      return false
    end
  end
  local rec, inm = record(id)
  local ls = rec and leaseof(l)
  local mine = ls and tonumber(ls) == token
  if rec and not delivered then
    if mine then
      release(l)
      -- Scored 0: a lease that ran out, so that a take of the lean path
      -- (lean.go), which looks for leases run out before it hands out
      -- anything new, knows to leave this one to the take function,
      -- which hands it out again in its place.
      redis.call('ZADD', L, 0, l)
      touch(L, 'l')
      if mode == 'p' then redis.call('ZREM', P, l) end
      dirty = true
      return true
    end
  elseif rec and (mine or (ls and over(ls)) or (not ls and not pendof(l))) then
    local exp, til, dk = hdr(rec)
    if mode == 'd' then
      remove(id, exp, nil, false, inm)
    else
      if ls then
        if uses('l') then redis.call('ZREM', L, l) end
        release(l)
      end
      redis.call('ZADD', P, 0, l)
      touch(P, 'p')
    end
    forget(id, til, dk, true)
  end
  return false
end

-- reset_forever sets the count of messages without expiry to 0 when the
-- queue holds nothing: the lean path (lean.go) counts its appends in H.f
-- but not its deliveries, so f may stand above the true count (which only
-- keeps keys longer), and is set right here.
local function reset_forever()
  local f = forever0 + dforever
  if (f > 0 or not xknown or x0 + dexp ~= 0) and qlen() == 0 then
    dforever = -forever0
    xknown, dexp = true, -x0
    dirty = true
  end
end

-- drop_stale_pel forgets the lean path's leases that ran out on messages gone
-- from the queue.
local function drop_stale_pel()
  for l, c in pairs(pel_load()) do
    if over(string.match(c, '^%d+') or '0') and not record(unlex(l)) then release(l) end
  end
end

-- drop_stale_leases forgets a few leases that ran out on messages gone
-- from the queue (a node that died while it took one, say).
local function drop_stale_leases()
  drop_stale_pel()
  if not uses('l') then return end
  for _, l in ipairs(redis.call('ZRANGE', L, '-inf', '(' .. fmt((now + 1) * 1000), 'BYSCORE', 'LIMIT', 0, 8)) do
    if not record(unlex(l)) then
      redis.call('ZREM', L, l)
      if uses('p') then redis.call('ZREM', P, l) end
    end
  end
end

-- num reads a field of H that may be missing; tonumber costs a strtod,
-- which a missing field is spared.
local function num(v) return v and int(v) or 0 end

-- qbegin starts a call of a queue function: it reads the meta hash and
-- settles what ARGV[3] carries: the deliveries the node settled and has
-- not sent yet, "id token mode exp" separated by spaces ('': none), exp
-- the message's expiry (ms, 0: never) when it has no dedup key, else '-'.
-- They are settled before the operation, which then finds its own
-- arguments from ARGV[3] on.
local function qbegin()
  S, M, P, B, K, W, H, L = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
  gcneed, dforever, dirty = 0, 0, false
  cursor, pel = nil, nil
  local meta = redis.call('HMGET', H, 'f', 'g', 'e', 'u', 'c', 'w', 'x')
  forever0 = num(meta[1])
  g0 = num(meta[2])
  e0 = num(meta[3])
  used = meta[4] or ''
  dmax = num(meta[5])
  parked0 = num(meta[6])
  parked = parked0
  newused = false
  x0, dexp, xhad = num(meta[7]), 0, meta[7] ~= false
  xknown = xhad
  if not meta[3] and not meta[4] then
    -- No meta: a new queue (every queue with messages has e), or one
    -- only the lean path appended to, without expiry.
    used, newused = 'n', true
    xknown = true
  end
  touched = ''
  local carried = table.remove(ARGV, 3)
  if carried and carried ~= '' then
    local f = {}
    for w in string.gmatch(carried, '%S+') do f[#f + 1] = w end
    for i = 1, #f - 3, 4 do settle(f[i], tonumber(f[i + 1]), f[i + 2], true, f[i + 3] ~= '-' and int(f[i + 3]) or nil) end
    -- Applied with the operation's own changes (see qend): a settling
    -- and an append that leave the count of messages without expiry as
    -- it was then write no meta and no TTLs.
  end
end

-- qend ends a call of a queue function that answers r: it applies what
-- the call changed and is left to apply (finish costs nothing when that
-- is nothing).
local function qend(r)
  finish()
  return r
end
