package redisstore

// PelRecheck is pelRecheck, for the tests of the package's public surface.
const PelRecheck = pelRecheck
