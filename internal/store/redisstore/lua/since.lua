-- Since. ARGV[3] cursor id ('' for the whole history), [4] most entries
-- (0: all). Returns {gap, {{id, {x, exp, t, ct, b, body}}, ...}}.
local after, max = ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', HS) == 0 then
  if after == '' then return {0, {}} end
  return {1, {}}
end
expire_front()
local gap = 0
local d = redis.call('HGET', HM, 'd')
if d and (after == '' or lex(d) > lex(after)) then gap = 1 end
local start = '-'
if after ~= '' then start = '(' .. after end
local es
if max > 0 then
  es = redis.call('XRANGE', HS, start, '+', 'COUNT', max)
else
  es = redis.call('XRANGE', HS, start, '+')
end
return {gap, es}
