package redisstore

import (
	"embed"
	"strings"

	"github.com/redis/rueidis"
)

//go:embed lua/*.lua
var luaFS embed.FS

// script concatenates Lua files into one script: base.lua, then the files
// given (a prelude and an operation's body).
func script(files ...string) *rueidis.Lua {
	var b strings.Builder
	for _, f := range append([]string{"base.lua"}, files...) {
		src, err := luaFS.ReadFile("lua/" + f)
		if err != nil {
			panic("redisstore: missing script " + f)
		}
		b.Write(src)
		b.WriteByte('\n')
	}
	return rueidis.NewLuaScript(b.String())
}

var (
	scAppend  = script("queue.lua", "append.lua")
	scTake    = script("queue.lua", "take.lua")
	scTakeAll = script("queue.lua", "takeall.lua")
	scSettle  = script("queue.lua", "settle.lua")
	scAck     = script("queue.lua", "ack.lua")
	scStatus  = script("queue.lua", "status.lua")
	scLen     = script("queue.lua", "len.lua")
	scClear   = script("queue.lua", "clear.lua")
	scReply   = script("queue.lua", "reply.lua")

	scRecord = script("history.lua", "record.lua")
	scSince  = script("history.lua", "since.lua")

	scRegister  = script("register.lua")
	scLookup    = script("lookup.lua")
	scHeartbeat = script("heartbeat.lua")
	scNodes     = script("nodes.lua")
)
