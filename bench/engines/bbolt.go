package main

import (
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

var bucket = []byte("m")

type boltKV struct{ db *bolt.DB }

func init() {
	engines = append(engines,
		engine{"bbolt", func(dir string) (kv, error) { return openBolt(dir, false) }},
		engine{"bbolt NoFreelistSync", func(dir string) (kv, error) { return openBolt(dir, true) }},
	)
}

func openBolt(dir string, noFreelistSync bool) (kv, error) {
	db, err := bolt.Open(filepath.Join(dir, "bench.db"), 0o600, &bolt.Options{
		NoFreelistSync: noFreelistSync,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
	return boltKV{db}, err
}

func (b boltKV) commit(ms []mut) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucket)
		bk.FillPercent = 0.9 // keys of one queue arrive in order
		for _, m := range ms {
			var err error
			if m.v == nil {
				err = bk.Delete(m.k)
			} else {
				err = bk.Put(m.k, m.v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (b boltKV) scan(fn func(k, v []byte)) error {
	return b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error { fn(k, v); return nil })
	})
}

func (b boltKV) close() error { return b.db.Close() }
