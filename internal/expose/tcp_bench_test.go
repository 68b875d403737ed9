package expose_test

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// BenchmarkExposeTCP moves 8 MiB per operation up a raw TCP connection to
// a local sink that answers one byte at the end, directly (the baseline)
// and through `postern expose tcp://` (server, yamux over a websocket,
// agent). Compare the two MB/s figures of one run.
func BenchmarkExposeTCP(b *testing.B) {
	const size = 8 << 20
	sink := func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		c.Write([]byte{1})
	}
	run := func(b *testing.B, addr string) {
		buf := make([]byte, 64<<10)
		b.SetBytes(size)
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			for sent := 0; sent < size; sent += len(buf) {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(*net.TCPConn).CloseWrite()
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	b.Run("direct", func(b *testing.B) {
		run(b, strings.TrimPrefix(tcpServer(b, sink), "tcp://"))
	})
	b.Run("postern", func(b *testing.B) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cfg := servertest.Config()
		cfg.Expose.TCPPorts = strconv.Itoa(port)
		n := servertest.Start(b, cfg)
		c, err := client.New(n.URL)
		if err != nil {
			b.Fatal(err)
		}
		startTCPAgent(b, c, client.ExposeOptions{Name: "sink", Local: tcpServer(b, sink)})
		run(b, "127.0.0.1:"+strconv.Itoa(port))
	})
}
