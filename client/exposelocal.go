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

// localReady makes sure the pair has a live local connection: one that
// the local service closed while idle, or on which it sent data no
// request asked for, is dropped and dialed again. The check is one
// non-blocking peek at the socket (see idleClosed), where a watcher
// goroutine reading between answers cost two goroutine switches per
// request; a close that races the request is left to exchange's retry,
// as http.Transport does.
func (p *pair) localReady() error {
	if p.lc != nil {
		if p.lr.Buffered() == 0 && !idleClosed(p.lc) {
			return nil
		}
		p.dropLocal()
	}
	return p.dial()
}
