//go:build !unix

package node

// fileLimit is unknown here: no connection cap is derived.
func fileLimit() uint64 { return 0 }
