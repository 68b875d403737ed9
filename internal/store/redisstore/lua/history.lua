-- Part of the library for the history functions (after base.lua); hbegin
-- starts each call.
-- KEYS[1] HS stream of entries: fields x (expires ms, 0: never), t (content
--            type), b (body)
-- KEYS[2] HM hash: d = newest id trimmed or expired (readers asking for
--            anything before it may have missed entries), f = newest id
--            recorded without expiry
local HS, HM
local function hbegin() HS, HM = KEYS[1], KEYS[2] end

-- expire_front drops expired entries from the front, as the memory engine
-- does: entries of one topic usually share one TTL, so the oldest expire
-- first.
local function expire_front()
  local dropped
  while true do
    local es = redis.call('XRANGE', HS, '-', '+', 'COUNT', 1)
    if #es == 0 then break end
    local x = tonumber(es[1][2][2])
    if x == 0 or now < x then break end
    redis.call('XDEL', HS, es[1][1])
    dropped = es[1][1]
  end
  if dropped then redis.call('HSET', HM, 'd', dropped) end
end
