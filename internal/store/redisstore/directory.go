package redisstore

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/store"
)

// dkey is the directory key of (ns, name): a sorted set of node addresses
// scored by the instant (ms) their entry expires.
func (s *Store) dkey(ns, name string) string {
	return s.prefix + "d{" + tag(ns+"\x00"+name) + "}"
}

// nkeys are the keys of the node list: a sorted set of node ids scored by
// the instant (ms) their heartbeat expires, and a hash id -> address.
func (s *Store) nkeys() []string {
	base := s.prefix + "n{nodes}:"
	return []string{base + "z", base + "a"}
}

func ttlArg(ttl time.Duration) string {
	if ttl <= 0 {
		return "0"
	}
	return strconv.FormatInt(max(ttl.Milliseconds(), 1), 10)
}

var errEmptyName = errors.New("directory: empty name or address")

// Register implements store.Directory.
func (s *Store) Register(ctx context.Context, ns, name, addr string, ttl time.Duration) error {
	if addr == "" {
		return errEmptyName
	}
	if ttl <= 0 {
		return s.Unregister(ctx, ns, name, addr)
	}
	_, err := s.exec(ctx, scRegister, []string{s.dkey(ns, name)}, s.nowMS(), addr, ttlArg(ttl))
	return err
}

// Unregister implements store.Directory.
func (s *Store) Unregister(ctx context.Context, ns, name, addr string) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return s.wrap(ctx, s.c.Do(ctx, s.c.B().Zrem().Key(s.dkey(ns, name)).Member(addr).Build()).Error())
}

// Lookup implements store.Directory.
func (s *Store) Lookup(ctx context.Context, ns, name string) ([]string, error) {
	res, err := s.exec(ctx, scLookup, []string{s.dkey(ns, name)}, s.nowMS())
	if err != nil {
		return nil, err
	}
	addrs, err := res.AsStrSlice()
	if err != nil {
		return nil, errBadReply
	}
	return addrs, nil
}

// Heartbeat implements store.Directory. A ttl <= 0 removes the node at once
// (a node leaving on shutdown).
func (s *Store) Heartbeat(ctx context.Context, node store.NodeInfo, ttl time.Duration) error {
	if node.ID == "" {
		return errEmptyName
	}
	_, err := s.exec(ctx, scHeartbeat, s.nkeys(), s.nowMS(), node.ID, node.Addr, ttlArg(ttl))
	return err
}

// Nodes implements store.Directory. The list is ordered by node id.
func (s *Store) Nodes(ctx context.Context) ([]store.NodeInfo, error) {
	res, err := s.exec(ctx, scNodes, s.nkeys(), s.nowMS())
	if err != nil {
		return nil, err
	}
	flat, err := res.AsStrSlice()
	if err != nil || len(flat)%2 != 0 {
		return nil, errBadReply
	}
	out := make([]store.NodeInfo, 0, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		out = append(out, store.NodeInfo{ID: flat[i], Addr: flat[i+1]})
	}
	sortNodes(out)
	return out, nil
}

func sortNodes(ns []store.NodeInfo) {
	slices.SortFunc(ns, func(a, b store.NodeInfo) int { return strings.Compare(a.ID, b.ID) })
}
