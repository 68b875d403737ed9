-- Settle leases. ARGV[3] '1' delivered or '0' not; [4] the wake channel
-- and [5] the queue's key, published there when a message is queued again
-- while a waiter is parked; then triples from ARGV[6]: id, lease token,
-- mode ('d' or 'p').
-- Each as settle (queue.lua) says. Returns 1.
local delivered = ARGV[3] == '1'
local requeued = false
for i = 6, #ARGV, 3 do
  if settle(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], delivered) then requeued = true end
end
if requeued then wake(ARGV[4], ARGV[5]) end
reset_forever()
finish()
return 1
