package main

import (
	"strings"
	"testing"
	"time"
)

// A report of wrk 4 run with --latency, as printed on this project's
// machines.
const wrkReport = `Running 1s test @ http://127.0.0.1:45417/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.37ms    1.87ms  27.67ms   88.94%
    Req/Sec    17.18k     4.02k   21.78k    65.00%
  Latency Distribution
     50%  764.00us
     75%    1.77ms
     90%    3.42ms
     99%    8.99ms
  34294 requests in 1.01s, 8.60MB read
Requests/sec:  34080.38
Transfer/sec:      8.55MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk([]byte(wrkReport))
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 34294 || r.elapsed != 1010*time.Millisecond || r.p99 != 8990*time.Microsecond {
		t.Fatalf("parsed %+v, want 34294 requests in 1.01s, p99 8.99ms", r)
	}
}

func TestParseWrkRefusesFailedRequests(t *testing.T) {
	for _, extra := range []string{
		"  Non-2xx or 3xx responses: 110627\n",
		"  Socket errors: connect 0, read 3, write 0, timeout 0\n",
	} {
		out := strings.Replace(wrkReport, "Requests/sec:", extra+"Requests/sec:", 1)
		if _, err := parseWrk([]byte(out)); err == nil {
			t.Errorf("a report with %q parsed without an error", strings.TrimSpace(extra))
		}
	}
	if _, err := parseWrk([]byte("unable to connect to 127.0.0.1:1 Connection refused\n")); err == nil {
		t.Error("a report without requests parsed without an error")
	}
}
