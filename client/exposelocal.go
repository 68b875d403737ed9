package client

import "bufio"

// dropLocal closes the local connection and waits for its watcher.
func (p *pair) dropLocal() {
	if p.lc == nil {
		return
	}
	p.s.mu.Lock()
	p.lc.Close()
	p.lc = nil
	p.s.mu.Unlock()
	close(p.resume)
	<-p.watched
	p.lr, p.lw = nil, nil
}

// dial connects the pair to the local service and starts the watcher.
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
	p.ready = make(chan error, 1)
	p.resume = make(chan struct{})
	p.watched = make(chan struct{})
	go watch(p.lr, p.ready, p.resume, p.watched)
	return nil
}

func watch(lr *bufio.Reader, ready chan<- error, resume <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		_, err := lr.Peek(1)
		ready <- err
		if err != nil {
			return
		}
		if _, ok := <-resume; !ok {
			return
		}
	}
}

// localReady makes sure the pair has a live local connection: one the
// watcher has news of while idle (the local service closed it, or sent
// data no request asked for) is dropped and dialed again.
func (p *pair) localReady() error {
	if p.lc != nil {
		select {
		case <-p.ready:
			p.dropLocal() // closed (or babbling) while idle: dial again
		default:
			return nil
		}
	}
	return p.dial()
}
