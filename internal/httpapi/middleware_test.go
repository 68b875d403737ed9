package httpapi_test

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/httpapi"
)

// TestFlushErrorReachesTheHandler: behind the request metrics, a flush
// that cannot reach the client (here: past its write deadline) is an error
// the handler sees, not a success: the front doors settle deliveries on
// it.
func TestFlushErrorReachesTheHandler(t *testing.T) {
	flushed := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			flushed <- err
			return
		}
		w.Header().Set("Content-Length", "5")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("hello"))
		flushed <- rc.Flush()
	})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httpapi.NewMetrics(prometheus.NewRegistry(), quiet).Wrap(h), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	res, err := http.Get("http://" + ln.Addr().String() + "/")
	if err == nil {
		io.ReadAll(res.Body)
		res.Body.Close()
	}
	if err := <-flushed; err == nil {
		t.Fatal("a flush past the write deadline reported success")
	}
	http.DefaultClient.CloseIdleConnections()
}
