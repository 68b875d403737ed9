-- Ack. ARGV[3] id. Returns 1 when a message was removed.
local id = ARGV[3]
local rec, inm = record(id)
if not rec then return 0 end
local exp, til, dk = hdr(rec)
remove(id, exp, nil, false, inm)
forget(id, til, dk, true)
finish()
return 1
