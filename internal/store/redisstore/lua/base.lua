-- Start of the function library (see scripts.go): the node's clock, the
-- garbage-collection margin and id helpers. Redis runs one function at a
-- time, so the library's locals below hold the state of the call under
-- way; begin sets them at the start of every call.
-- args[1] now in ms on the node's clock; every expiry decision uses it
-- args[2] garbage-collection margin in ms added to Redis TTLs
local KEYS, ARGV, now, margin
local function begin(keys, args)
  KEYS, ARGV = keys, args
  now = tonumber(ARGV[1])
  -- Kept as text: arithmetic converts it where a TTL needs it, and most
  -- calls set none.
  margin = ARGV[2]
end

local function fmt(n) return string.format('%d', n) end
-- int reads a number argument; tonumber costs a strtod, which the common
-- '0' is spared.
local function int(v)
  if v == '0' then return 0 end
  return tonumber(v)
end

local function pad(x) return string.rep('0', 16 - #x) .. x end
-- lex turns "ms-seq" into a fixed-width form whose byte order is id order.
local function lex(id)
  local i = string.find(id, '-', 1, true)
  return pad(string.sub(id, 1, i - 1)) .. '-' .. pad(string.sub(id, i + 1))
end
local function strip(x)
  local y = string.gsub(x, '^0+', '')
  if y == '' then return '0' end
  return y
end
local function unlex(l) return strip(string.sub(l, 1, 16)) .. '-' .. strip(string.sub(l, 18)) end

-- xadd appends an entry to stream key at now's millisecond, or right after
-- the stream's last id when the clock stands behind it (another node's
-- clock, or a step back), so ids strictly increase. maxlen, when not nil,
-- trims the stream to that many entries.
local function xadd(key, maxlen, ...)
  -- ARGV[1] is now, in ms, as the node wrote it.
  local r
  if maxlen then
    r = redis.pcall('XADD', key, 'MAXLEN', maxlen, ARGV[1] .. '-*', ...)
  else
    r = redis.pcall('XADD', key, ARGV[1] .. '-*', ...)
  end
  if type(r) ~= 'table' or not r.err then return r end
  local info = redis.call('XINFO', 'STREAM', key)
  local last
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
  local id = string.sub(last, 1, string.find(last, '-', 1, true) - 1) .. '-*'
  if maxlen then return redis.call('XADD', key, 'MAXLEN', maxlen, id, ...) end
  return redis.call('XADD', key, id, ...)
end
