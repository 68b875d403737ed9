-- Directory Lookup. KEYS[1] sorted set addr -> expiry ms.
return redis.call('ZRANGE', KEYS[1], '(' .. fmt(now), '+inf', 'BYSCORE')
