package main

// baseline-store is the least a produce must do, in plain net/http: read
// the body under a read deadline, keep it with a record of 128 bytes (the
// size of the memory engine's index entry of a message), and answer 201
// with the headers a produce answers with. Against baseline-hello it
// shows what any server that stores what it is sent pays on this machine
// before any code of postern's runs: the heap it keeps only grows, and a
// fresh page costs several µs of CPU on first touch in a VM, besides the
// body's read and the larger answer. tunnel/wrk measures it in the same
// rounds as the nodes, as the floor their produce figures stand on; issue
// 20's bars stay against baseline-hello.

import (
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// storeRecord is what baseline-store keeps of one request.
type storeRecord struct {
	body []byte
	rec  *[128]byte
}

// storeHandler is baseline-store's handler.
type storeHandler struct {
	mu   sync.Mutex
	kept []storeRecord
}

func (s *storeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength < 0 || r.ContentLength > 128<<10 {
		http.Error(w, "baseline-store wants a body of known length, at most 128 KiB", http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	body := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, body); err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	rc.SetReadDeadline(time.Time{})
	rec := new([128]byte)
	copy(rec[:], r.URL.Path)
	s.mu.Lock()
	s.kept = append(s.kept, storeRecord{body: body, rec: rec})
	n := len(s.kept)
	s.mu.Unlock()
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Expose-Headers", "*, X-Message-Id, X-Queue-Size")
	h.Set("X-Message-Id", strconv.FormatInt(time.Now().UnixMilli(), 10)+"-"+strconv.Itoa(n))
	h.Set("X-Queue-Size", strconv.Itoa(n))
	w.WriteHeader(http.StatusCreated)
}
