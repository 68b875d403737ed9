-- Prelude of every queue script (after base.lua). The Go side prepends both
-- to each operation's body, so each operation is one atomic script.
--
-- KEYS[1] S  stream: one entry per appended message, in id order (its
--            last id keeps ids increasing after the queue empties)
-- KEYS[2] M  hash id -> record (header, dedup key, content type, body)
-- KEYS[3] P  sorted set (lex, score 0) of pending ids
-- KEYS[4] B  sorted set (lex, score 0) of restored ids: messages put back
--            at their id position, which a stream cannot take
-- KEYS[5] K  hash dedup key -> id of the queued message carrying it
-- KEYS[6] W  sorted set dedup key -> end of its window (ms): keys of
--            messages handed out, remembered until then
-- KEYS[7] H  hash of queue meta: f = messages without expiry,
--            g = latest instant (ms) any stored data is needed until
local S, M, P, B, K, W, H = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local gcneed = 0
local dforever = 0
local dirty = false

-- The meta hash H, read once per script: f = messages without expiry,
-- g = latest instant (ms) any stored data is needed until, e = the TTL
-- deadline applied to the keys (ms; -1: persisted), u = letters of the
-- optional keys (p, b, k, w) that may exist. Keys not in u are neither read
-- nor given TTLs, which keeps the common scripts to a few commands.
local meta = redis.call('HMGET', H, 'f', 'g', 'e', 'u')
local forever0 = tonumber(meta[1] or '0')
local g0 = tonumber(meta[2] or '0')
local e0 = tonumber(meta[3] or '0')
local used = meta[4] or ''
local newused = false
local letter = {[P] = 'p', [B] = 'b', [K] = 'k', [W] = 'w'}
local function uses(c) return string.find(used, c, 1, true) ~= nil end

-- touched records the keys written, which finish gives the current TTL.
local touched = {}
local function touch(k)
  touched[k] = true
  local c = letter[k]
  if c and not uses(c) then
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
local function need(t) if t > gcneed then gcneed = t end end

local function qlen()
  local n = redis.call('XLEN', S)
  if uses('b') then n = n + redis.call('ZCARD', B) end
  return n
end

-- remove drops message id from every structure; src is 's' (stream), 'b'
-- (restored) or nil (unknown); notpending skips the pending set.
local function remove(id, exp, src, notpending)
  if src == 's' then
    redis.call('XDEL', S, id)
  elseif src == 'b' then
    redis.call('ZREM', B, lex(id))
  elseif redis.call('XDEL', S, id) == 0 and uses('b') then
    redis.call('ZREM', B, lex(id))
  end
  if not notpending and uses('p') then redis.call('ZREM', P, lex(id)) end
  redis.call('HDEL', M, id)
  if exp == 0 then dforever = dforever - 1 end
  dirty = true
end

-- forget drops the dedup bookkeeping of a message leaving the queued state;
-- when it was delivered its key is remembered until the end of its window.
local function forget(id, til, dk, delivered)
  if dk == '' then return end
  if redis.call('HGET', K, dk) == id then redis.call('HDEL', K, dk) end
  if delivered and til > now then
    redis.call('ZADD', W, til, dk)
    touch(W)
    need(til)
  end
  dirty = true
end

-- finish sets the Redis TTLs, which only collect garbage: every key of the
-- queue lives at least as long as its longest-lived data plus the margin,
-- and for ever while a message without expiry is queued. The deadline
-- applied is kept in H.e, extended with one margin of headroom, so most
-- scripts set no TTL at all, only those of keys they created.
local function finish()
  if not dirty and gcneed == 0 and next(touched) == nil then return end
  local f = forever0 + dforever
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
      for k in pairs(touched) do redis.call('PEXPIRE', k, e - now) end
    end
    return
  end
  local keys = {S, M, H}
  for k, c in pairs(letter) do
    if uses(c) then keys[#keys + 1] = k end
  end
  for _, k in ipairs(keys) do
    if e == -1 then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, e - now) end
  end
end

-- scan visits every message of the queue in id order, merging the stream
-- and the restored set, until visit returns true. visit may remove the
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
    return sbuf[si][1]
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
    local sid, bl = speek(), bpeek()
    if sid == nil and bl == nil then return end
    local id, src
    if bl == nil or (sid ~= nil and lex(sid) < bl) then
      id, src, si = sid, 's', si + 1
    else
      id, src, bi = unlex(bl), 'b', bi + 1
    end
    if visit(id, src) then return end
  end
end

-- drop_index removes an index entry that has no record (never expected).
local function drop_index(id, src)
  if src == 's' then redis.call('XDEL', S, id) else redis.call('ZREM', B, lex(id)) end
  if uses('p') then redis.call('ZREM', P, lex(id)) end
end
