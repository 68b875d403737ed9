package node

import (
	"context"
	"net/http"
	"sort"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/version"
	"github.com/postern/postern/internal/web"
)

// statusPage assembles the web page's status from the cores: one section
// per capability, with names (relay backends, exposed services) for the
// private readers the page is served to. A capability adds its
// figures with one more Section (and its rates to Rates).
func (n *Node) statusPage() *web.Web {
	w := web.New(web.Options{
		AtRoot:   n.cfg.Channels.AtRoot,
		Gatherer: n.registry,
		Version:  version.Version(),
		// Every reader of the status got past the ops gate (ops.go): a
		// token granted ops, a client on this host, or --ops-listen.
		Private: func(*http.Request) bool { return true },
		// The charts: ten minutes at the default interval.
		HistoryInterval: n.cfg.StatusInterval,
		Rates: []web.Rate{
			{Name: "http_requests", Metric: "postern_http_requests_total"},
			{Name: "tunnel_messages", Metric: "postern_queue_appended_total", Label: "kind", Value: "t"},
			{Name: "tunnel_deliveries", Metric: "postern_queue_delivered_total", Label: "kind", Value: "t"},
			{Name: "inbox_messages", Metric: "postern_inbox_sent_total"},
			{Name: "inbox_received", Metric: "postern_inbox_received_total"},
			{Name: "channel_messages", Metric: "postern_broker_published_total"},
			{Name: "channel_deliveries", Metric: "postern_broker_delivered_total"},
			{Name: "relay_requests", Metric: "postern_relay_requests_total", Label: "namespace", Value: "relay"},
			{Name: "expose_requests", Metric: "postern_relay_requests_total", Label: "namespace", Value: "expose"},
		},
	})
	counters := func(names ...string) map[string]float64 {
		out := map[string]float64{}
		mfs, err := n.registry.Gather()
		if err != nil {
			return out
		}
		for _, name := range names {
			out[name] = web.CounterSum(mfs, name, "", "")
		}
		return out
	}
	w.Section("tunnels", func(context.Context) any {
		t := struct {
			Queues    int     `json:"queues"`
			Messages  int     `json:"messages"`
			LongPolls int     `json:"long_polls"`
			Sent      float64 `json:"sent"`
		}{LongPolls: n.queue.Waiting()}
		if st, ok := n.store.(store.Stats); ok {
			qs := st.QueueStats()
			t.Queues, t.Messages = qs.Queues, qs.Messages
		}
		mfs, _ := n.registry.Gather()
		t.Sent = web.CounterSum(mfs, "postern_queue_appended_total", "kind", "t")
		return t
	})
	w.Section("inbox", func(context.Context) any {
		c := counters("postern_inbox_sent_total", "postern_inbox_received_total", "postern_inbox_acks_total", "postern_inbox_duplicates_total")
		return struct {
			Sent       float64 `json:"sent"`
			Received   float64 `json:"received"`
			Acks       float64 `json:"acks"`
			Duplicates float64 `json:"duplicates"`
		}{c["postern_inbox_sent_total"], c["postern_inbox_received_total"], c["postern_inbox_acks_total"], c["postern_inbox_duplicates_total"]}
	})
	w.Section("channels", func(context.Context) any { return n.channels.Stats() })
	w.Section("relay", func(ctx context.Context) any {
		return backendsSection(ctx, n.relayHub.Backends(), "connected_backends", "backends")
	})
	w.Section("expose", func(ctx context.Context) any {
		return backendsSection(ctx, n.expose.Hub().Backends(), "connected_agents", "agents")
	})
	w.Section("cluster", func(context.Context) any {
		me := n.members.self()
		return struct {
			Node string `json:"node"`
			Addr string `json:"advertised"`
		}{me.ID, me.Addr}
	})
	w.Section("store", func(context.Context) any {
		return struct {
			Engine string `json:"engine"`
		}{n.store.Name()}
	})
	return w
}

// backendsSection is the status of a relay hub: the number of names held,
// and for private readers each name with its count of backends.
func backendsSection(ctx context.Context, backends map[string]int, countKey, listKey string) map[string]any {
	out := map[string]any{countKey: len(backends)}
	if !web.IsPrivate(ctx) {
		out["names_hidden"] = true
		return out
	}
	type entry struct {
		Name     string `json:"name"`
		Backends int    `json:"connections"`
	}
	list := make([]entry, 0, len(backends))
	for name, c := range backends {
		list = append(list, entry{name, c})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	out[listKey] = list
	return out
}
