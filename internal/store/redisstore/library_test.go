package redisstore_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// libraries lists the names of the postern function libraries srv holds.
func libraries(t *testing.T, srv *redistest.Server) []string {
	t.Helper()
	r, err := srv.Do("FUNCTION", "LIST", "LIBRARYNAME", "postern_*")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	libs, _ := r.([]any)
	for _, l := range libs {
		fields, _ := l.([]any)
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] == "library_name" {
				names = append(names, fmt.Sprint(fields[i+1]))
			}
		}
	}
	return names
}

// TestFunctionLibraryComesBack: the store loads its function library when
// it opens, and a Redis that lost it (FUNCTION FLUSH here; a restart
// without persistence is the same) is given it again by the next call,
// which then succeeds.
func TestFunctionLibraryComesBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := open(t, srv.URL(), nil)
	defer s.Close()
	if libs := libraries(t, srv); len(libs) != 1 {
		t.Fatalf("libraries after Open: %q, want one", libs)
	}
	if _, err := s.Append(ctx, "t/lib", store.Message{Body: []byte("a")}, store.AppendOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"b", "c"} {
		if _, err := srv.Do("FUNCTION", "FLUSH"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append(ctx, "t/lib", store.Message{Body: []byte(body)}, store.AppendOptions{}); err != nil {
			t.Fatalf("append after FUNCTION FLUSH: %v", err)
		}
	}
	for _, want := range []string{"a", "b", "c"} {
		l, ok, err := s.Take(ctx, "t/lib", store.TakeDelete, time.Minute)
		if err != nil || !ok || string(l.Body) != want {
			t.Fatalf("take: %q %v %v, want %q", l.Body, ok, err, want)
		}
	}
}

// TestFunctionLibraryNeedsLoad: a user Redis does not allow FUNCTION LOAD
// cannot open the store, and is told why.
func TestFunctionLibraryNeedsLoad(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	if _, err := srv.Do("ACL", "SETUSER", "nofn", "on", ">secret-pw", "~*", "&*", "+@all", "-function"); err != nil {
		t.Fatal(err)
	}
	u := strings.Replace(srv.URL(), "redis://", "redis://nofn:secret-pw@", 1)
	s, err := redisstore.Open(u, redisstore.Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded without FUNCTION LOAD")
	}
	if !strings.Contains(err.Error(), "FUNCTION LOAD") || strings.Contains(err.Error(), "secret-pw") {
		t.Fatalf("Open: %v, want a reason naming FUNCTION LOAD and no password", err)
	}
}

// TestFunctionLibraryOnClusterReplicas: on a Redis Cluster the store loads
// the library on every master, and the replicas receive it from their
// masters, so a replica promoted in a failover runs the calls at once.
func TestFunctionLibraryOnClusterReplicas(t *testing.T) {
	cl := redistest.StartCluster(t, redistest.ClusterOptions{})
	s := open(t, cl.URL(), nil)
	defer s.Close()
	masters := 0
	for _, n := range cl.Nodes {
		role, err := n.Info("replication", "role")
		if err != nil {
			t.Fatal(err)
		}
		if role != "master" {
			continue
		}
		masters++
		if libs := libraries(t, n); len(libs) != 1 {
			t.Fatalf("master %s holds libraries %q, want one", n.Addr, libs)
		}
		// Once the replica has what the master wrote, it holds the
		// library too.
		if err := n.WaitCaughtUp(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		for _, r := range cl.ReplicasOf(n) {
			if libs := libraries(t, r); len(libs) != 1 {
				t.Fatalf("replica %s holds libraries %q, want one", r.Addr, libs)
			}
		}
	}
	if masters != 3 {
		t.Fatalf("%d masters, want 3", masters)
	}
}
