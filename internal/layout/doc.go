// Package layout holds no code: its tests check the house rules of the
// whole tree, so that a change that breaks one fails like any other test.
//
//   - Imports go strictly downward through the layers listed in
//     layout_test.go (foundation, contracts, HTTP, engines, cores,
//     transports, capabilities, node, surface, command line, mains): a
//     package imports only packages of lower layers, and a new package
//     takes its place in the list.
//   - No function outside tests and bench/ is longer than 100 lines.
//   - Every package says what it owns in a doc comment.
package layout
