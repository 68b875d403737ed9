package config

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/postern/postern/internal/expose"
	"github.com/postern/postern/internal/node"
)

// Log defaults.
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "text"
)

// Serve is the configuration of `postern serve`.
type Serve struct {
	Server     node.Config
	LogLevel   string
	LogFormat  string
	ConfigFile string
}

// ServeFlags returns the flags of `postern serve`, writing into a config
// that starts from the defaults.
func ServeFlags() (*FlagSet, *Serve) {
	c := &Serve{Server: node.DefaultConfig(), LogLevel: DefaultLogLevel, LogFormat: DefaultLogFormat}
	s, t, ib, rl, ex := &c.Server, &c.Server.Tunnel, &c.Server.Inbox, &c.Server.Relay, &c.Server.Expose
	fs := NewFlagSet("serve")

	fs.Group("Server")
	fs.ConfigFile(&c.ConfigFile, "config", "TOML `file` of settings, one key per flag name (flags and environment win over it)")
	fs.String(&s.Listen, "listen", "TCP `address` to serve HTTP on")
	fs.String(&s.Store, "store", "storage `engine`: file:DIR (durable, on disk in DIR), memory (lost on exit), redis://[user:pass@]host:port/db (rediss:// for TLS; more Cluster nodes as &addr=host:port) shared by many nodes, or redis-sentinel://host:port[,host:port...]/master[/db] for the master these sentinels name")
	fs.Int(&s.RedisWaitReplicas, "redis-wait-replicas", "on Redis, acknowledge a write that stores a message only once this many replicas confirm it (WAIT); writes they do not confirm within --redis-wait-timeout are answered 503 (they may have happened); 0: acknowledge when the master has it")
	fs.Duration(&s.RedisWaitTimeout, "redis-wait-timeout", "how long a write waits for --redis-wait-replicas replicas to confirm it")
	fs.String(&s.NodeID, "node-id", "`name` of this node among the nodes sharing one engine (default: host name plus a random suffix)")
	fs.String(&s.AdvertiseAddr, "advertise-addr", "base `URL` other nodes reach this node at, e.g. http://10.0.0.5:8080 (default: the listen address)")
	fs.String(&s.ClusterSecret, "cluster-secret", "`secret` shared by every node, signing the requests nodes forward to each other (needed on Redis; prefer the environment: flags show in ps)")
	fs.Bool(&s.ClusterInsecure, "cluster-insecure", "let nodes forward requests to each other without --cluster-secret (their marks then prove nothing): only where nothing but postern nodes can reach them")
	fs.Duration(&s.NodeTTL, "node-ttl", "how long the node directory lists this node after a heartbeat (it beats every third of that)")
	fs.Group("Logs and shutdown")
	fs.String(&c.LogLevel, "log-level", "log `level`: debug, info, warn or error")
	fs.String(&c.LogFormat, "log-format", "log `format`: text or json")
	fs.Duration(&s.ShutdownTimeout, "shutdown-timeout", "longest graceful drain on SIGTERM before connections are cut")
	fs.Group("Connections and rate limits")
	fs.Duration(&s.ReadHeaderTimeout, "read-header-timeout", "time a client has to send its request headers")
	fs.Duration(&s.IdleTimeout, "idle-timeout", "idle keep-alive connections are closed after this")
	fs.Int(&s.MaxHeaderBytes, "max-header-bytes", "largest request header block in `bytes`")
	fs.Int(&s.MaxConnections, "max-connections", "most client connections open at once (websockets, streams and long-polls included); more are answered 503, but 16 more are taken for /healthz, /readyz and /metrics; 0: derived from the open-file limit; -1: no cap")
	fs.Int(&s.MaxConnectionsPerAddr, "max-connections-per-addr", "most connections one client address (IPv6: its /64; behind --trusted-proxies: the client X-Forwarded-For names) holds open; more are answered 429; 0: 1024 (at most half of --max-connections); -1: no cap")
	fs.Float64(&s.RateLimit.PerAddr, "rate-limit-addr", "requests per second allowed to one client address (IPv6: per /64); 0: unlimited")
	fs.Int(&s.RateLimit.PerAddrBurst, "rate-limit-addr-burst", "requests one address may send at once (0: two seconds' worth)")
	fs.Float64(&s.RateLimit.PerToken, "rate-limit-token", "requests per second allowed to one scoped token; 0: unlimited")
	fs.Int(&s.RateLimit.PerTokenBurst, "rate-limit-token-burst", "requests one token may send at once (0: two seconds' worth)")
	fs.Prefixes(&s.TrustedProxies, "trusted-proxies", "comma-separated CIDR `prefixes` of proxies whose X-Forwarded-For names the client")
	fs.Group("TLS and tokens")
	fs.String(&s.TLSCertFile, "tls-cert", "PEM `file` of the TLS certificate chain: serve HTTPS (a wildcard certificate for the expose domain covers every agent)")
	fs.String(&s.TLSKeyFile, "tls-key", "PEM `file` of the TLS private key, with --tls-cert")
	fs.Repeated(&s.ACME.Domains, "acme-domain", "`name` to serve HTTPS for with a certificate obtained and renewed through ACME (Let's Encrypt by default), instead of --tls-cert; repeat it or give a comma list. NAME.<--expose-domain> then gets its own certificate on demand while agent NAME is connected. The CA checks each name on port 443 (TLS-ALPN-01): listen there (--listen :443)")
	fs.String(&s.ACME.Email, "acme-email", "contact `address` of the ACME account, for the CA's notices (with --acme-domain, postern accepts the CA's subscriber agreement for that account)")
	fs.String(&s.ACME.CA, "acme-ca", "ACME directory `URL` of the certificate authority (Let's Encrypt's staging: https://acme-staging-v02.api.letsencrypt.org/directory)")
	fs.String(&s.ACME.Dir, "acme-dir", "`directory` keeping the ACME account key and the certificates (default: acme in the --store file directory, else ./postern-data/acme)")
	fs.String(&s.ACME.CARoots, "acme-ca-root", "PEM `file` of root certificates to trust, beside the system's, for the CA's own HTTPS (a test CA such as pebble)")
	fs.String(&s.OpsListen, "ops-listen", "TCP `address` serving /metrics, /ops/*, the status page and /readyz with its reason to whoever reaches it, instead of the public address (keep it private, e.g. 127.0.0.1:9090)")
	fs.String(&s.TokenFile, "token-file", "TOML `file` of scoped tokens (which actions on which paths), honoured by every capability")

	fs.Group("Tunnels (/t/)")
	fs.String(&t.AccessToken, "tunnel-access-token", "bearer `token` accepted on every tunnel route (prefer the environment: flags show in ps)", "TUNNEL_ACCESS_TOKEN")
	fs.String(&t.SignatureSecret, "tunnel-signature-secret", "HMAC-SHA256 `secret` checked against X-Hub-Signature-256", "TUNNEL_SIGNATURE_SECRET")
	fs.List(&t.PublicIDs, "tunnel-public-ids", "comma-separated tunnel `ids` that need no auth", "TUNNEL_PUBLIC_IDS")
	fs.Int(&t.MaxLen, "tunnel-max-len", "largest queue length of a tunnel", "TUNNEL_MAXLEN")
	fs.Bool(&t.Backpressure, "tunnel-backpressure", "refuse produce with 507 when a tunnel is full (off: trim the oldest, counted and reported in X-Queue-Trimmed)", "TUNNEL_BACKPRESSURE")
	fs.Duration(&t.MaxPollTimeout, "tunnel-max-poll-timeout", "longest long-poll; larger timeout parameters are clamped", "TUNNEL_MAX_POLL_TIMEOUT")
	fs.Duration(&t.PollTimeout, "tunnel-poll-timeout", "long-poll wait when the request names no timeout", "TUNNEL_DEFAULT_POLL_TIMEOUT")
	fs.String(&t.DefaultContentType, "tunnel-default-content-type", "Content-Type served for messages stored without one", "TUNNEL_DEFAULT_CONTENT_TYPE")
	fs.Duration(&t.ReplyTTL, "tunnel-reply-ttl", "how long a reply is kept", "TUNNEL_REPLY_TTL")
	fs.Int64(&t.MaxBodyBytes, "tunnel-max-body", "largest message or reply in `bytes`; larger get 413")
	fs.Duration(&t.IdempotencyWindow, "tunnel-idempotency-window", "how long a produce's Idempotency-Key is remembered: a repeat within it answers as the first did and stores nothing")
	fs.Int(&t.IdempotencyKeys, "tunnel-idempotency-keys", "most Idempotency-Keys of delivered messages a tunnel remembers; the oldest are forgotten first")
	fs.Duration(&s.Queue.Lease, "delivery-lease", "how long a tunnel or inbox message handed out stays reserved for its consumer: not answered and settled by then, it is back at the head of its queue")

	fs.Group("Inbox (/inbox)")
	fs.Duration(&ib.Expiration, "inbox-expiration", "how long inbox messages and acks wait to be read, and idempotency keys are remembered", "REDIS_EXPIRATION_SECONDS")
	fs.Int64(&ib.MaxBodyBytes, "inbox-max-body", "largest inbox request body in `bytes`; larger get 413")
	fs.Int(&ib.MaxDestinations, "inbox-max-destinations", "most destinations one inbox envelope may name")
	fs.Int(&ib.MaxReceive, "inbox-max-receive", "most messages and acks one inbox receive returns; the rest wait for the next")
	fs.Int(&ib.MaxLen, "inbox-max-len", "most messages and acks one inbox holds; sends to a full inbox get 507, acks for it are dropped")
	fs.Int(&ib.MaxKeys, "inbox-max-keys", "most idempotency keys of read messages and acks one inbox remembers; the oldest are forgotten beyond it (a message sent again with a forgotten key is delivered again)")
	fs.Int(&ib.MaxActorBytes, "inbox-max-actor-bytes", "longest inbox actor name (From header, destination) in `bytes`")

	fs.Group("Relay (/client/, /server/)")
	fs.Int(&rl.BlockSize, "relay-block-size", "largest piece in `bytes` of a user's upgraded stream handed to a relay client at once (the original's --block_size)")
	fs.Duration(&rl.InactiveRequestTimeout, "relay-inactive-request-timeout", "a relayed request with no response chunk for this long ends: 504 before its first chunk, a cut connection after (the original's --inactive_request_timeout)")
	fs.Duration(&rl.InactiveBackendTimeout, "relay-inactive-backend-timeout", "a relay backend that has not polled for this long is forgotten (the original's --inactive_backend_timeout)")
	fs.Duration(&rl.PollTimeout, "relay-poll-timeout", "how long /server/request waits for a user request before 408")
	fs.Duration(&rl.PickupTimeout, "relay-pickup-timeout", "how long a user request waits for a relay client to take it before 500")
	fs.Duration(&rl.RequestStreamTimeout, "relay-request-stream-timeout", "how long /server/requeststream waits for the user's bytes before answering empty")
	fs.Int64(&rl.MaxRequestBodyBytes, "relay-max-request-body", "largest user request body in `bytes` relayed to a backend (the protocol carries it whole); larger get 413")
	fs.Int64(&rl.MaxResponseMessageBytes, "relay-max-response-message", "largest /server/response message in `bytes`; larger get 400")
	fs.Bool(&rl.ForwardedHeaders, "relay-forwarded-headers", "send relay backends X-Forwarded-For, X-Forwarded-Host and X-Forwarded-Proto (off, as the original: the user's headers pass as they came)")

	exposeFlags(fs, ex)
	ch, b := &c.Server.Channels, &c.Server.Broker
	fs.Group("Channels (/c/)")
	fs.Bool(&ch.AtRoot, "channels-at-root", "serve channels at / (a dedicated host, as pinghub was deployed) instead of under /c/; ops endpoints and other prefixes keep priority, the status page moves to /_postern/")
	fs.List(&ch.Origins, "channels-origin", "comma-separated scheme://host[:port] `origins` allowed to subscribe and publish (requests without Origin are always allowed; empty: all)")
	fs.List(&ch.BroadcastOnly, "channels-broadcast-only", "comma-separated channel path `prefixes` where websocket clients may listen but not publish")
	fs.Int64(&ch.MaxPostBytes, "channels-max-post", "largest POST body in `bytes`; larger get 413")
	fs.Int64(&ch.MaxMessageBytes, "channels-max-message", "largest websocket message in `bytes`; larger close the connection with 1009")
	fs.Bool(&ch.PlainWrites, "channels-plain-writes", "send every frame to subscribers with write(2), never batched through io_uring (which fan-out uses where the Linux kernel allows it): for a kernel or sandbox where io_uring misbehaves")
	fs.Int(&b.QueueLen, "channels-queue", "send queue of each subscriber in messages; a subscriber that falls further behind is dropped (close 1008)")
	fs.Int(&b.HistoryLen, "channels-history", "messages kept per channel for resuming with since (negative: no history)")
	fs.Duration(&b.HistoryTTL, "channels-history-ttl", "how long a channel's history entries are kept")
	fs.Int(&b.MaxHistoryChannels, "channels-history-channels", "on one node (no Redis), the channels whose history is kept: every channel published to records, the least recently published is forgotten first")
	fs.Int(&b.MaxHistoryBytes, "channels-history-bytes", "on one node (no Redis), the message `bytes` kept in all channel histories together")
	return fs, c
}

// NewLogger returns a logger writing to w at level in format.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid log format %q: want text or json", format)
}

// exposeFlags defines the flags of the expose capability.
func exposeFlags(fs *FlagSet, ex *expose.Options) {
	fs.Group("Expose (NAME.<domain>, /agent, /proxy/)")
	fs.String(&ex.Domain, "expose-domain", "`domain` D whose hosts NAME.D reach expose agent NAME (its DNS and certificate should cover *.D)", "DOMAIN")
	fs.String(&ex.BaseURL, "expose-base-url", "public base `URL` of this server; brickchain mandate tokens must name a uri under it (default: the scheme and host the agent connected to)", "BASE")
	fs.Int64(&ex.Brickchain.MaxRequestBytes, "expose-max-request-body", "largest request body in `bytes` relayed to a brickchain agent; larger get 413")
	fs.Int64(&ex.Brickchain.MaxFrameBytes, "expose-max-frame", "largest frame in `bytes` a brickchain agent may send; a larger response gets 502")
	fs.Duration(&ex.Brickchain.ResponseTimeout, "expose-timeout", "how long a brickchain agent has to answer before the user gets 504")
	fs.Int(&ex.Brickchain.ClientRate, "expose-client-rate", "requests allowed to each brickchain client per --expose-client-rate-period (0: unlimited); more get 429")
	fs.Duration(&ex.Brickchain.ClientRatePeriod, "expose-client-rate-period", "period of --expose-client-rate")
	fs.String(&ex.TCPPorts, "expose-tcp-ports", "range LO-HI of public TCP `ports` handed to agents exposing raw TCP (postern expose tcp://...), one per name; empty: no raw TCP")
	fs.Bool(&ex.AnonymousAgents, "expose-anonymous-agents", "without --token-file, let native agents from any address claim any name (default: loopback agents only)")
}
