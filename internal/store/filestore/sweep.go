package filestore

import "time"

func (s *Store) sweepLoop(interval time.Duration) {
	defer close(s.swept)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			for i := range s.shards {
				if s.writable() != nil || s.closed.Load() {
					break
				}
				s.sweep(&s.shards[i])
			}
		}
	}
}

// sweep removes expired replies, messages and dedup keys of one shard,
// visiting at most sweepBatch of each, and waits until the removals are
// durable.
func (s *Store) sweep(sh *shard) {
	sh.mu.Lock()
	var w wset
	now := s.now()
	s.sweepHistories(sh, now)
	n := 0
	for rk, r := range sh.replies {
		if n++; n > sweepBatch {
			break
		}
		if r.msg.Expired(now) {
			delete(sh.replies, rk)
			w.muts = append(w.muts, mut{bucket: bReplies, key: keyFor(rk.key, rk.id)})
		}
	}
	n = 0
	for key, q := range sh.queues {
		if n > sweepBatch {
			break
		}
		for k, until := range q.seen {
			n++
			if !now.Before(until) {
				delete(q.seen, k)
				w.delSeen(key, k)
			}
		}
		for i := 0; i < q.Len() && n <= sweepBatch; n++ {
			e := q.Live()[i]
			if !e.msg.Expired(now) {
				i++
				continue
			}
			q.RemoveAt(i)
			q.forget(key, e, false, now, &w)
			w.delMsg(key, e)
			s.messages.Add(-1)
		}
		s.maybeForget(sh, key, q)
	}
	if len(w.muts) == 0 {
		sh.mu.Unlock()
		return
	}
	// A failure is handled by the committer; the next sweep tries again.
	_ = s.finish(sh, &w)
}
