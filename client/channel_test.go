package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

func recv(t *testing.T, s *client.Subscription) client.ChannelMessage {
	t.Helper()
	select {
	case m, ok := <-s.Messages():
		if !ok {
			t.Fatalf("subscription ended: %v", s.Err())
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10 s")
	}
	return client.ChannelMessage{}
}

func TestChannelPublishSubscribe(t *testing.T) {
	cfg := servertest.Config()
	cfg.Broker.HistoryLen = 2
	n := servertest.Start(t, cfg)
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ch := c.Channel("news/today")
	if ch.Path() != "/news/today" {
		t.Fatalf("path %q", ch.Path())
	}
	// Other forms of a path name its canonical form, which the server
	// redirects them to: a publish there must not be lost to a redirect.
	for p, want := range map[string]string{"//news/today": "/news/today", "/x/../news/./today": "/news/today", "/a/": "/a/", "": "/"} {
		if got := c.Channel(p).Path(); got != want {
			t.Fatalf("Channel(%q).Path() = %q, want %q", p, got, want)
		}
	}
	s, err := ch.Subscribe(ctx, client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.WaitForSubscribers(t, "/news/today", 1)
	if err := c.Channel("/x/../news//today").Publish(ctx, []byte("zero")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, s); string(m.Data) != "zero" {
		t.Fatalf("got %+v, want zero", m)
	}
	for _, msg := range []string{"one", "two with spaces & ?#"} {
		if err := ch.Publish(ctx, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, s); string(m.Data) != msg || m.ID == "" || m.Gap {
			t.Fatalf("got %+v, want %q", m, msg)
		}
	}
	first := s.LastID()
	s.Close()
	if !errors.Is(s.Err(), client.ErrSubscriptionClosed) {
		t.Fatalf("Err after Close: %v", s.Err())
	}
	if _, ok := <-s.Messages(); ok {
		t.Fatal("Messages still open after Close")
	}
	n.WaitForSubscribers(t, "/news/today", 0)
	// Resume: what was published meanwhile arrives first.
	ch.Publish(ctx, []byte("three"))
	r, err := ch.Subscribe(ctx, client.SubscribeOptions{Since: first})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if m := recv(t, r); string(m.Data) != "three" {
		t.Fatalf("resumed with %+v", m)
	}
	// A cursor the history no longer covers: a gap marker first.
	ch.Publish(ctx, []byte("four"))
	ch.Publish(ctx, []byte("five"))
	recv(t, r)
	recv(t, r)
	g, err := ch.Subscribe(ctx, client.SubscribeOptions{Since: first})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if m := recv(t, g); !m.Gap {
		t.Fatalf("want a gap marker, got %+v", m)
	}
	// Publishing errors come back as *client.Error.
	var ce *client.Error
	if err := c.Channel("/"+strings.Repeat("x", 300)).Publish(ctx, []byte("x")); !errors.As(err, &ce) || ce.StatusCode != 400 {
		t.Fatalf("long path: %v", err)
	}
	if _, err := c.Channel("/"+strings.Repeat("x", 300)).Subscribe(ctx, client.SubscribeOptions{}); !errors.As(err, &ce) || ce.StatusCode != 400 {
		t.Fatalf("long path subscribe: %v", err)
	}
}

func TestSubscriptionEnds(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	c, _ := client.New(n.URL)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := c.Channel("/end").Subscribe(ctx, client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.WaitForSubscribers(t, "/end", 1)
	cancel()
	for range s.Messages() {
	}
	if !errors.Is(s.Err(), context.Canceled) {
		t.Fatalf("Err after cancel: %v", s.Err())
	}
	s.Close()
	// The server's shutdown ends a subscription with 1001.
	s2, err := c.Channel("/end").Subscribe(context.Background(), client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	n.WaitForSubscribers(t, "/end", 1)
	n.Shutdown(context.Background())
	for range s2.Messages() {
	}
	var closed *client.ClosedError
	if !errors.As(s2.Err(), &closed) || closed.Code != 1001 {
		t.Fatalf("Err after shutdown: %v", s2.Err())
	}
}

func TestChannelsAtRoot(t *testing.T) {
	cfg := servertest.Config()
	cfg.Channels.AtRoot = true
	n := servertest.Start(t, cfg)
	c, _ := client.New(n.URL, client.WithChannelsPrefix(""))
	s, err := c.Channel("/").Subscribe(context.Background(), client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n.WaitForSubscribers(t, "/", 1)
	if err := c.Channel("/").Publish(context.Background(), []byte("root")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, s); string(m.Data) != "root" {
		t.Fatalf("got %+v", m)
	}
}
