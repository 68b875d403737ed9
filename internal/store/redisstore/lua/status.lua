-- Status. ARGV[3] id. Returns 0 none, 1 queued, 2 pending.
local id = ARGV[3]
local rec = record(id)
if not rec or expired((hdr(rec))) then return 0 end
local l = lex(id)
if pendof(l) then
  local ls = leaseof(l)
  if ls and over(ls) then return 1 end
  return 2
end
return 1
