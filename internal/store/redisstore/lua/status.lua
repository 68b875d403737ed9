-- Status. ARGV[3] id. Returns 0 none, 1 queued, 2 pending.
local id = ARGV[3]
local rec = redis.call('HGET', M, id)
if not rec or expired((hdr(rec))) then return 0 end
if uses('p') and redis.call('ZSCORE', P, lex(id)) then return 2 end
return 1
