package channels_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/servertest"
)

// BenchmarkWebsocketFanout1000 measures one POST delivered to 1000
// websocket subscribers, until the last has read it.
func BenchmarkWebsocketFanout1000(b *testing.B) {
	const subs = 1000
	n := servertest.Start(b, servertest.Config())
	url := "ws" + strings.TrimPrefix(n.URL, "http") + "/c/bench"
	conns := make([]*websocket.Conn, subs)
	for i := range conns {
		c, _, err := websocket.Dial(context.Background(), url, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.CloseNow()
		conns[i] = c
	}
	n.WaitForSubscribers(b, "/bench", subs)
	hc := &http.Client{}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := hc.Post(n.URL+"/c/bench", "text/plain", strings.NewReader("tick"))
		if err != nil {
			b.Fatal(err)
		}
		res.Body.Close()
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Go(func() {
				if _, _, err := c.Read(context.Background()); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
	}
	b.StopTimer()
	hc.CloseIdleConnections()
}
