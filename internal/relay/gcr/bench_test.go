package gcr_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/servertest"
)

// BenchmarkRelaySmallRequest relays small GETs from concurrent users
// through a node and the tuned relay client (`postern relay`'s settings)
// to a backend answering "ok", all in this process: ns/op and allocs/op
// add up the user's client, the node, the relay client and the backend,
// for before/after comparisons of the path of a small relayed request.
// The load harness (bench/, scenario relay) measures it as deployed.
func BenchmarkRelaySmallRequest(b *testing.B) {
	n := servertest.Start(b, servertest.Config())
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "2")
		w.Write([]byte("ok"))
	}))
	b.Cleanup(be.Close)
	c, err := gcrclient.New(gcrclient.Tuned(gcrclient.Options{RelayURL: n.URL, ServerName: "bench", BackendURL: be.URL}))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	if err := n.WaitForRelayPolls(ctx, "bench", gcrclient.TunedNumPendingRequests); err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	b.Cleanup(tr.CloseIdleConnections)
	u := n.URL + "/client/bench/items/1"
	b.ReportAllocs()
	b.SetParallelism(8) // 16 users on 2 cores, as a loaded relay sees them
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 64)
		for pb.Next() {
			resp, err := tr.RoundTrip(mustGet(u))
			if err != nil {
				b.Error(err)
				return
			}
			k, _ := io.ReadFull(resp.Body, buf)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(buf[:k]) != "ok" {
				b.Errorf("got %d %q, want 200 \"ok\"", resp.StatusCode, buf[:k])
				return
			}
		}
	})
}

func mustGet(u string) *http.Request {
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		panic(err)
	}
	return req
}
