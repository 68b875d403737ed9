-- Clear. Removes every message and dedup key; replies live in keys of
-- their own and stay. Returns how many messages there were.
local n = qlen()
redis.call('XTRIM', S, 'MAXLEN', 0)
redis.pcall('XGROUP', 'DESTROY', S, GROUP)
redis.call('DEL', M, P, B, K, W, L)
redis.call('HDEL', H, 'f', 'u')
forever0, dforever, used, newused = 0, 0, 'n', true
x0, dexp, xknown, xhad = 0, 0, true, false
dirty = true
finish()
return n
