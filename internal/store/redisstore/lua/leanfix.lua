-- Lean fix-up: what an append of the lean path (lean.go), made with plain
-- commands, leaves to a function. ARGV[3] the id it appended, to be
-- removed again as refused if the queue, without it, holds [4] or more
-- messages ('': no limit); [5] max length to trim the queue to (0: none).
-- Applies the meta hash and the TTLs (a new queue, or one whose keys had
-- a TTL and now hold a message without expiry). Returns {removed, len,
-- trimmed}: removed 1 when the refused message was removed, 0 when it had
-- been handed out already (the append stands).
local id, limit, maxlen = ARGV[3], int(ARGV[4]), int(ARGV[5])
dirty = true
local removed = 0
if id ~= '' and limit > 0 and qlen() - 1 >= limit then
  local l = lex(id)
  local rec, inm = record(id)
  local ls = rec and leaseof(l)
  if rec and not (ls and not over(ls)) and not pendof(l) then
    local exp, til, dk = hdr(rec)
    remove(id, exp, 's', false, inm)
    forget(id, til, dk, false)
    removed = 1
  end
end
local n = qlen()
local trimmed = 0
if removed == 0 and maxlen > 0 then n, trimmed = trim(n, maxlen) end
finish()
return {removed, n, trimmed}
