package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLeanConn runs the lean client against a net/http server answering
// with each framing postern uses, on one kept-alive connection.
func TestLeanConn(t *testing.T) {
	var accepted atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("POST /t/q", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "text/plain" || string(b) != "hello" {
			http.Error(w, "bad request body", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("GET /sized", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("y", 300)))
	})
	mux.HandleFunc("GET /chunked", func(w http.ResponseWriter, r *http.Request) {
		for range 3 {
			w.Write([]byte(strings.Repeat("z", 100)))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("GET /empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.Write([]byte("bye"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			accepted.Add(1)
		}
	}}
	go srv.Serve(ln)
	defer srv.Close()
	host := ln.Addr().String()
	l := newLeanConn(t.Context(), host, 5*time.Second)
	defer l.close()
	for _, c := range []struct {
		req    []byte
		status int
	}{
		{leanRequest("POST", host, "/t/q", "text/plain", []byte("hello")), 201},
		{leanRequest("GET", host, "/sized", "", nil), 200},
		{leanRequest("GET", host, "/chunked", "", nil), 200},
		{leanRequest("GET", host, "/empty", "", nil), 204},
		{leanRequest("GET", host, "/missing", "", nil), 404},
		{leanRequest("POST", host, "/t/q", "text/plain", []byte("hello")), 201},
	} {
		status, err := l.do(c.req)
		if err != nil || status != c.status {
			t.Fatalf("%q: %d, %v; want %d", c.req, status, err, c.status)
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("%d connections for six requests, want 1 kept alive", n)
	}
	if status, err := l.do(leanRequest("GET", host, "/close", "", nil)); err != nil || status != 200 {
		t.Fatalf("close: %d, %v", status, err)
	}
	if status, err := l.do(leanRequest("GET", host, "/sized", "", nil)); err != nil || status != 200 {
		t.Fatalf("after close: %d, %v", status, err)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("%d connections, want a second one after Connection: close", n)
	}
}

// TestLeanConnBadAnswers: what the lean client cannot read is an error,
// and a server that stops answering is an error within the timeout.
func TestLeanConnBadAnswers(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 200 OK\r\n\r\n", // no length
		"HTTP/1.1 20x OK\r\nContent-Length: 0\r\n\r\n",
		"SMTP ready\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", // then EOF
		"HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("a", 5000) + "\r\n\r\n",
	} {
		_, _, err := readAnswer(bufio.NewReaderSize(strings.NewReader(answer), 4096))
		if err == nil {
			t.Errorf("%.60q: no error", answer)
		}
	}
	// A server that reads the request and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-done
	}()
	l := newLeanConn(t.Context(), ln.Addr().String(), 200*time.Millisecond)
	defer l.close()
	_, err = l.do(leanRequest("GET", ln.Addr().String(), "/", "", nil))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("silent server: %v, want a timeout", err)
	}
	// The phase's end cuts a pending exchange short.
	ctx, cancel := context.WithCancel(t.Context())
	l = newLeanConn(ctx, ln.Addr().String(), time.Minute)
	defer l.close()
	errc := make(chan error, 1)
	go func() {
		_, err := l.do(leanRequest("GET", ln.Addr().String(), "/", "", nil))
		errc <- err
	}()
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("cancelled exchange: no error")
	}
}

// FuzzReadAnswer: any bytes give an answer or an error, never a panic.
func FuzzReadAnswer(f *testing.F) {
	f.Add("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n")
	f.Add("HTTP/1.1 204 No Content\r\n\r\n")
	f.Fuzz(func(t *testing.T, answer string) {
		readAnswer(bufio.NewReaderSize(strings.NewReader(answer), 4096))
	})
}
