package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// baseline-store answers a produce as a node does (201 and the produce's
// headers) and keeps what it was sent; a body of unknown length is a
// clear 400.
func TestStoreHandler(t *testing.T) {
	s := &storeHandler{}
	srv := httptest.NewServer(s)
	defer srv.Close()
	for i, want := range []string{"1", "2"} {
		resp, err := http.Post(srv.URL+"/t/load-1", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("produce %d: status %d, want 201", i, resp.StatusCode)
		}
		for _, h := range []string{"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "X-Message-Id"} {
			if resp.Header.Get(h) == "" {
				t.Errorf("produce %d: no %s", i, h)
			}
		}
		if got := resp.Header.Get("X-Queue-Size"); got != want {
			t.Errorf("produce %d: X-Queue-Size %q, want %q", i, got, want)
		}
	}
	s.mu.Lock()
	kept := len(s.kept)
	body := string(s.kept[0].body)
	s.mu.Unlock()
	if kept != 2 || body != "hello" {
		t.Fatalf("kept %d records, the first %q; want 2, \"hello\"", kept, body)
	}

	// A chunked body: its length is not known up front.
	resp, err := http.Post(srv.URL+"/t/load-1", "text/plain", io.MultiReader(strings.NewReader("x")))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "known length") {
		t.Fatalf("chunked body: %d %q, want 400 saying it wants a known length", resp.StatusCode, msg)
	}
}
