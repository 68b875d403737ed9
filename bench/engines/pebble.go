package main

import (
	"github.com/cockroachdb/pebble/v2"
)

type pebbleKV struct{ db *pebble.DB }

func init() {
	engines = append(engines, engine{"pebble", func(dir string) (kv, error) {
		db, err := pebble.Open(dir, &pebble.Options{Logger: quiet{}})
		return pebbleKV{db}, err
	}})
}

type quiet struct{}

func (quiet) Infof(string, ...any)  {}
func (quiet) Errorf(string, ...any) {}
func (quiet) Fatalf(format string, args ...any) {
	panic(format)
}

func (p pebbleKV) commit(ms []mut) error {
	b := p.db.NewBatch()
	defer b.Close()
	for _, m := range ms {
		if m.v == nil {
			b.Delete(m.k, nil)
		} else {
			b.Set(m.k, m.v, nil)
		}
	}
	return b.Commit(pebble.Sync)
}

func (p pebbleKV) scan(fn func(k, v []byte)) error {
	it, err := p.db.NewIter(nil)
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		fn(it.Key(), it.Value())
	}
	return it.Close()
}

func (p pebbleKV) close() error { return p.db.Close() }
