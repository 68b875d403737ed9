// Package connpeek tells whether the peer of an idle kept-alive
// connection closed it, or sent on it unasked, before a request is written
// on it again: one non-blocking peek at the socket, where a goroutine
// reading between answers would cost two goroutine switches per request.
// The expose agent uses it for its connections to the local service, the
// relay agent for its connections to the backend.
package connpeek
