package gcr

// SplicedBytes is the count of bytes spliced from posters' connections
// to users' answers so far.
func SplicedBytes() int64 { return splicedBytes.Load() }
