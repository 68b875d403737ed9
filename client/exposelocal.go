package client

import "bufio"

// dropLocal closes the local connection.
func (p *pair) dropLocal() {
	if p.lc == nil {
		return
	}
	p.s.mu.Lock()
	p.lc.Close()
	p.lc = nil
	p.s.mu.Unlock()
	p.lr, p.lw = nil, nil
}

// dial connects the pair to the local service.
func (p *pair) dial() error {
	lc, err := p.s.dialer.DialContext(p.s.ctx, "tcp", p.s.addr)
	if err != nil {
		return err
	}
	p.s.mu.Lock()
	if p.s.ctx.Err() != nil {
		p.s.mu.Unlock()
		lc.Close()
		return p.s.ctx.Err()
	}
	p.lc = lc
	p.s.mu.Unlock()
	p.lr = bufio.NewReaderSize(lc, pairLocalReadBuf)
	p.lw = bufio.NewWriterSize(lc, pairLocalWriteBuf)
	return nil
}

// localReady makes sure the pair has a live local connection for a
// request (replayable: one without a body, which exchange sends again on
// a new connection when nothing comes back): one that the local service
// closed while idle, or on which it sent data no request asked for, is
// dropped and dialed again. The check is one non-blocking peek at the
// socket (see idleClosed), where a watcher goroutine reading between
// answers cost two goroutine switches per request. A replayable request
// skips it on a connection whose last answer ended less than pairFresh
// ago (the peek was a system call and three allocations per request
// under load): a close in between is met by the retry. A close that
// races the request is left to that retry too, as http.Transport does.
func (p *pair) localReady(replayable bool) error {
	if p.lc != nil {
		fresh := replayable && p.now.Sub(p.idleSince) < pairFresh
		if p.lr.Buffered() == 0 && (fresh || !idleClosed(p.lc)) {
			return nil
		}
		p.dropLocal()
	}
	return p.dial()
}
