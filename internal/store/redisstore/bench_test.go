package redisstore_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// BenchmarkDeliver measures the engine's cost of delivering one message:
// an append, a take under a lease and its settling, by goroutines each on a
// tunnel of its own, as concurrent HTTP handlers would. It reports the
// calls postern sent Redis per message and the commands those ran (INFO
// commandstats), this process' and Redis' CPU time per message, next to Redis' CPU time
// per XADD sent the same way (appends of a bare stream entry, same
// goroutines).
func BenchmarkDeliver(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	u := srv.URL()
	s := open(b, u, nil)
	defer s.Close()
	body := []byte(strings.Repeat("x", 256))
	var seq atomic.Int64

	xadds := func(n int) float64 {
		c, _ := raw(b, u)
		cpu0 := redisCPU(srv.PID())
		b.RunParallel(func(pb *testing.PB) {
			key := fmt.Sprint("xadd", seq.Add(1))
			for pb.Next() {
				if err := c.Do(ctx, c.B().Xadd().Key(key).Id("*").FieldValue().FieldValue("r", string(body)).Build()).Error(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		return (redisCPU(srv.PID()) - cpu0) / float64(n)
	}

	if _, err := srv.Do("CONFIG", "RESETSTAT"); err != nil {
		b.Fatal(err)
	}
	cpu0, self0 := redisCPU(srv.PID()), selfCPU()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		key := fmt.Sprint("t/bench", seq.Add(1))
		for pb.Next() {
			if _, err := s.Append(ctx, key, store.Message{Body: body}, store.AppendOptions{}); err != nil {
				b.Error(err)
				return
			}
			l, ok, err := s.Take(ctx, key, store.TakeDelete, time.Minute)
			if err != nil || !ok {
				b.Errorf("take: %v %v", ok, err)
				return
			}
			if err := s.Settle(ctx, key, []store.Lease{l}, true); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	self := (selfCPU() - self0) / float64(b.N)
	cpu := (redisCPU(srv.PID()) - cpu0) / float64(b.N)
	calls, scripted := commandstats(b, srv)
	b.ReportMetric(calls/float64(b.N), "calls/msg")
	b.ReportMetric(scripted/float64(b.N), "cmds/msg")
	b.ReportMetric(self*1e6, "self-µs/msg")
	b.ReportMetric(cpu*1e6, "redis-µs/msg")
	b.ReportMetric(xadds(b.N)*1e6, "redis-µs/xadd")
}

// redisCPU is the CPU time, in seconds, process pid has used.
func redisCPU(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	rest := string(raw)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100
}

// commandstats sums INFO commandstats: calls clients sent (scripts,
// PUBLISH, GETDEL, WAIT) and the commands the scripts ran.
func commandstats(b *testing.B, srv *redistest.Server) (calls, scripted float64) {
	r, err := srv.Do("INFO", "commandstats")
	if err != nil {
		b.Fatal(err)
	}
	info, _ := r.(string)
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		top, _, _ := strings.Cut(name, "|")
		n, _ := strconv.ParseFloat(strings.SplitN(rest, ",", 2)[0], 64)
		switch top {
		case "fcall", "publish", "getdel", "wait":
			calls += n
		case "info", "config", "hello", "ping", "client", "subscribe", "select", "function", "cluster":
		default:
			scripted += n
		}
	}
	return calls, scripted
}

// BenchmarkAppend measures the engine's cost of a produce, an append
// without options as a tunnel's POST makes it, from 32 goroutines over 8
// tunnels as the produce load of bench/ does: this process' time and
// allocations per append, Redis' CPU time per append, and how many reads
// Redis made per append (fewer: more appends share one write).
func BenchmarkAppend(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	s := open(b, srv.URL(), nil)
	defer s.Close()
	body := []byte(strings.Repeat("x", 256))
	var seq atomic.Int64
	reads := func() float64 {
		v, _ := srv.Info("stats", "total_reads_processed")
		n, _ := strconv.ParseFloat(v, 64)
		return n
	}
	cpu0, self0, reads0 := redisCPU(srv.PID()), selfCPU(), reads()
	b.ReportAllocs()
	b.SetParallelism(16) // 32 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		key := fmt.Sprint("t/load-", seq.Add(1)%8)
		for pb.Next() {
			if _, err := s.Append(ctx, key, store.Message{ContentType: "text/plain", Body: body}, store.AppendOptions{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric((reads()-reads0)/float64(b.N), "redis-reads/op")
	b.ReportMetric((selfCPU()-self0)/float64(b.N)*1e6, "self-µs/op")
	b.ReportMetric((redisCPU(srv.PID())-cpu0)/float64(b.N)*1e6, "redis-µs/op")
}

// selfCPU is the CPU time, in seconds, this process has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
