package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestInboxConversation(t *testing.T) {
	cfg := servertest.Config()
	at := time.Date(2020, 5, 9, 20, 20, 39, 0, time.UTC)
	cfg.Inbox.Now = func() time.Time { return at }
	n := servertest.Start(t, cfg)
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	olivia, maurice, george := c.Inbox("olivia"), c.Inbox("maurice"), c.Inbox("george")

	mail, remaining, err := olivia.Exchange(ctx, client.Envelope{IdempotencyKey: "000000000000", Destination: []string{"maurice", "george"},
		Body: json.RawMessage(`"Hey there, are you ok?"`), ExpectsAck: true})
	if err != nil || len(mail) != 0 || remaining != 0 {
		t.Fatalf("olivia exchange: %v %d %v", mail, remaining, err)
	}
	mail, _, err = maurice.Exchange(ctx, client.Envelope{IdempotencyKey: "111111111111", Destination: []string{"olivia", "george"},
		Body: json.RawMessage(`{"message": "Yep fine check this loremipsum", "lorem": "ipsum"}`)})
	if err != nil || len(mail) != 1 || mail[0].Message == nil || mail[0].Ack != nil {
		t.Fatalf("maurice exchange: %+v %v", mail, err)
	}
	want := client.InboxMessage{IdempotencyKey: "000000000000", Origin: "olivia", Body: json.RawMessage(`"Hey there, are you ok?"`), ExpectsAck: true, SentAt: at}
	if got := *mail[0].Message; got.IdempotencyKey != want.IdempotencyKey || got.Origin != want.Origin || string(got.Body) != string(want.Body) ||
		!got.ExpectsAck || !got.SentAt.Equal(at) {
		t.Fatalf("maurice got %+v", got)
	}
	if n, err := george.Send(ctx, client.Envelope{IdempotencyKey: client.NewIdempotencyKey()}); err != nil || n != 0 {
		t.Fatalf("send to nobody: %d %v", n, err) // nil Destination and Body go as [] and null
	}
	mail, _, err = george.Receive(ctx)
	if err != nil || len(mail) != 2 || mail[1].Message.Origin != "maurice" || string(mail[1].Message.Body) != `{"message":"Yep fine check this loremipsum","lorem":"ipsum"}` {
		t.Fatalf("george: %+v %v", mail, err)
	}
	mail, _, err = olivia.Receive(ctx)
	if err != nil || len(mail) != 3 || mail[1].Ack == nil || mail[2].Ack == nil {
		t.Fatalf("olivia: %+v %v", mail, err)
	}
	if a := *mail[2].Ack; a.IdempotencyKey != "000000000000" || a.Destination != "george" || !a.ReceivedAt.Equal(at) {
		t.Fatalf("ack %+v", a)
	}
	// Mail marshals back to the wire form.
	b, err := json.Marshal(mail)
	if err != nil {
		t.Fatal(err)
	}
	wantWire := `[{"type":"msg","idempotencyKey":"111111111111","origin":"maurice","body":{"message":"Yep fine check this loremipsum","lorem":"ipsum"},"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"},` +
		`{"type":"ack","idempotencyKey":"000000000000","destination":"maurice","receivedAt":"2020-05-09T20:20:39Z"},` +
		`{"type":"ack","idempotencyKey":"000000000000","destination":"george","receivedAt":"2020-05-09T20:20:39Z"}]`
	if string(b) != wantWire {
		t.Fatalf("marshalled %s\nwant %s", b, wantWire)
	}
	if _, err := json.Marshal(client.Mail{}); err == nil {
		t.Fatal("empty Mail marshalled")
	}
}

func TestInboxErrors(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	c, _ := client.New(n.URL)
	_, err := c.Inbox("a").Send(context.Background(), client.Envelope{IdempotencyKey: "short", Destination: []string{"", "b"}})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.StatusCode != 400 || len(ce.Details) != 2 ||
		ce.Error() != "postern: 400 Bad request: idempotency key is too short; empty raw string for actor type" {
		t.Fatalf("send error: %v", err)
	}
	if _, _, err := c.Inbox("").Receive(context.Background()); !errors.As(err, &ce) || ce.Details[0] != "empty raw string for actor type" {
		t.Fatalf("receive as nobody: %v", err)
	}
	if k1, k2 := client.NewIdempotencyKey(), client.NewIdempotencyKey(); k1 == k2 || len(k1) != 43 {
		t.Fatalf("keys %q %q", k1, k2)
	}
}
