-- TakeAll under one lease. ARGV[3] most messages to take (0: all), [4] the
-- lease token (score in L).
-- Returns {id1, record1, id2, record2, ...}.
local max, token = tonumber(ARGV[3]), ARGV[4]
local out = {}
takeable(math.huge, function(id, rec, l)
  redis.call('ZADD', L, token, l)
  touch(L, 'l')
  dirty = true
  out[#out + 1] = id
  out[#out + 1] = rec
  return max > 0 and #out >= 2 * max
end)
finish()
return out
