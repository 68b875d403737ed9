-- Directory Nodes. KEYS[1] sorted set node id -> expiry ms, KEYS[2] hash
-- node id -> addr. Returns {id1, addr1, ...} of live nodes.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], '(' .. fmt(now), '+inf', 'BYSCORE')) do
  local addr = redis.call('HGET', KEYS[2], id)
  if addr then
    out[#out + 1] = id
    out[#out + 1] = addr
  end
end
return out
