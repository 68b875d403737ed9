module github.com/postern/postern/bench/mux

go 1.26.0

require (
	github.com/coder/websocket v1.8.15
	github.com/hashicorp/yamux v0.1.2
	github.com/xtaci/smux v1.5.58
)

// The wire under test is postern's own (internal/expose/muxconn), not a copy.
require github.com/postern/postern v0.0.0

replace github.com/postern/postern => ../..
