package fsm_test

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
)

// variant returns a copy of base changed by f. f must replace maps and slices, not change
// them: they are shared with base.
func variant[T any](base T, f func(*T)) T {
	f(&base)
	return base
}

// Valid commands against the rich state (buildRich), each of which changes it. The invalid
// commands below are these with one rule broken, so that a refusal is the rule's doing.
var (
	okMemberUpsert  = fsm.MemberUpsert{ID: "m4", HTTPAddr: "10.0.0.4:8002", RaftAddr: "10.0.0.4:8003"}
	okMemberRemove  = fsm.MemberRemove{ID: "m2"}
	okMemberAlive   = fsm.MemberAlive{ID: "m1", Alive: false}
	okPeerRegister  = fsm.PeerRegister{ID: "p7", IP: "192.168.1.7", Hostname: "node-7", Port: 65007}
	okPeerRemove    = fsm.PeerRemove{IDs: []string{"p1", "p2"}}
	okTaskRegister  = fsm.TaskRegister{TaskID: taskID("new"), URL: "http://origin/new.bin", Digest: sha256Digest, PeerID: "p3", Headers: map[string]string{"Authorization": "Bearer n"}, Filter: []string{"token"}}
	okTaskPeerState = fsm.TaskPeerState{TaskID: tid1, PeerID: "p2", State: fsm.PeerTaskSuccess}
	okTaskDelete    = fsm.TaskDelete{TaskID: tid1}
	okPieceReport   = fsm.PieceReport{TaskID: tid3, PeerID: "p3", Success: true, Spans: spansOf(0, 3, 8, 9)} // t3: piece count unknown
	okPieceFailure  = fsm.PieceReport{TaskID: tid3, PeerID: "p3", Source: "p2", Spans: spansOf(10, 11)}
	okTaskMeta      = fsm.TaskMeta{TaskID: tid3, Generation: 1, Status: fsm.TaskRunning, PieceSize: 1 << 20, ContentLength: 10 << 20, PieceCount: 10}
	okPiecesCached  = fsm.PiecesCached{TaskID: tid3, MemberID: "m3", Generation: 1, First: 0, Digests: digests("t3", 0, 2)}
	okPreheatCreate = fsm.PreheatCreate{ID: "ph4", Kind: "file", URL: "http://origin/g.bin", Headers: map[string]string{"Cookie": "c"}}
	okPreheatUpdate = fsm.PreheatUpdate{ID: "ph1", Status: "running"}
)

func okBases() []fsm.Command {
	return []fsm.Command{okMemberUpsert, okMemberRemove, okMemberAlive, okPeerRegister, okPeerRemove,
		okTaskRegister, okTaskPeerState, okTaskDelete, okPieceReport, okPieceFailure, okTaskMeta,
		okPiecesCached, okPreheatCreate, okPreheatUpdate}
}

type namedCommand struct {
	name string
	cmd  fsm.Command
}

// Bad values, one per way of breaking a rule.
var (
	badIDs = map[string]string{
		"empty":          "",
		"129 characters": strings.Repeat("a", 129),
		"space":          "p 1",
		"slash":          "p/1",
		"colon":          "p:1",
		"non-ASCII":      "pü",
		"line break":     "p1\n",
		"NUL":            "p1\x00",
	}
	badTaskIDs = map[string]string{
		"empty":          "",
		"placeholder":    "t1",
		"uppercase":      strings.ToUpper(tid1),
		"63 characters":  tid1[:63],
		"65 characters":  tid1 + "0",
		"not hex":        tid1[:63] + "g",
		"sha256: prefix": "sha256:" + tid1,
	}
	badAddrs = map[string]string{
		"no port":           "10.0.0.4",
		"placeholder":       "h3",
		"empty host":        ":8002",
		"empty port":        "10.0.0.4:",
		"empty":             "",
		"bare IPv6":         "fd00::1",
		"two colons":        "a:b:8002",
		"257 bytes":         strings.Repeat("h", 252) + ":8002",
		"port not a number": "10.0.0.4:abc",
		"port 0":            "10.0.0.4:0",
		"port too big":      "10.0.0.4:99999",
		"host with newline": "host\nname:8002",
	}
	badIPs = map[string]string{
		"empty":             "",
		"placeholder":       "ip",
		"hostname":          "node-7.example",
		"out of range":      "256.1.1.1",
		"leading zeros":     "192.168.001.007",
		"with port":         "192.168.1.7:65007",
		"with zone":         "fe80::1%eth0",
		"unspecified IPv4":  "0.0.0.0",
		"unspecified IPv6":  "::",
		"unspecified IPv4m": "::ffff:0.0.0.0",
	}
	badHostnames = map[string]string{
		"empty":         "",
		"256 bytes":     strings.Repeat("h", 256),
		"line break":    "node\n7",
		"CR":            "node\r7",
		"tab":           "node\t7",
		"NUL":           "node\x007",
		"DEL":           "node\x7f7",
		"invalid UTF-8": "node\xff7",
		"C1 control":    "node\u00857",
	}
	badDigests = map[string]string{
		"placeholder sha256":  "sha256:abc",
		"placeholder md5":     "md5:00",
		"uppercase algorithm": "SHA256:" + strings.Repeat("ab", 32),
		"uppercase hex":       "sha256:" + strings.Repeat("AB", 32),
		"no algorithm":        strings.Repeat("ab", 32),
		"unknown algorithm":   "sha1:" + strings.Repeat("ab", 20),
		"md5 of sha256 size":  "md5:" + strings.Repeat("ab", 32),
		"sha256 of md5 size":  "sha256:" + strings.Repeat("ab", 16),
		"not hex":             "sha256:" + strings.Repeat("xy", 32),
		"trailing space":      sha256Digest + " ",
	}
	badURLs = map[string]string{
		"empty":      "",
		"8 KiB + 1":  "http://origin/" + strings.Repeat("x", fsm.MaxURLBytes+1-len("http://origin/")),
		"very large": strings.Repeat("x", 1<<20),
	}
	badHeaders = map[string]map[string]string{
		"65 headers":       manyHeaders(fsm.MaxHeaders + 1),
		"16 KiB + 1":       {"A": strings.Repeat("v", 8191), "B": strings.Repeat("v", 8192)},
		"empty name":       {"": "v"},
		"name with space":  {"X A": "v"},
		"name with colon":  {"X-A:": "v"},
		"name with CR":     {"X-A\r": "v"},
		"name non-ASCII":   {"X-Ä": "v"},
		"name with quote":  {`X-"A"`: "v"},
		"value with CR":    {"X-A": "v\rInjected: 1"},
		"value with LF":    {"X-A": "v\nInjected: 1"},
		"value with CRLF":  {"X-A": "v\r\nInjected: 1"},
		"value with NUL":   {"X-A": "v\x00"},
		"value with SOH":   {"X-A": "v\x01"},
		"value with DEL":   {"X-A": "v\x7f"},
		"one bad among ok": {"Authorization": "Bearer n", "X-B\n": "v"},
	}
	badSpans = map[string][]api.Span{
		"none":                     nil,
		"empty":                    {},
		"unsorted":                 spansOf(5, 6, 1, 2),
		"overlapping":              spansOf(0, 3, 2, 5),
		"touching":                 spansOf(0, 3, 3, 5),
		"duplicate":                spansOf(1, 1, 1, 1),
		"ends before it starts":    spansOf(6, 5),
		"From past MaxPieceIndex":  spansOf(api.MaxPieceIndex+1, api.MaxPieceIndex+1),
		"To past MaxPieceIndex":    spansOf(0, api.MaxPieceIndex+1),
		"last past MaxPieceIndex":  spansOf(0, 1, 5, math.MaxUint32),
		"wraps to an earlier span": spansOf(10, 20, 5, 6),
	}
)

func manyHeaders(n int) map[string]string {
	h := make(map[string]string, n)
	for i := 0; i < n; i++ {
		h[fmt.Sprintf("X-H%03d", i)] = "v"
	}
	return h
}

func manyIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("gone-%05d", i)
	}
	return ids
}

// invalidCommands has, for every command type, commands that break each rule of
// validate.go once.
func invalidCommands() []namedCommand {
	var out []namedCommand
	add := func(name string, c fsm.Command) { out = append(out, namedCommand{fmt.Sprintf("%T/%s", c, name), c}) }

	for _, what := range slices.Sorted(maps.Keys(badIDs)) {
		id := badIDs[what]
		add("ID "+what, variant(okMemberUpsert, func(c *fsm.MemberUpsert) { c.ID = id }))
		add("ID "+what, variant(okMemberRemove, func(c *fsm.MemberRemove) { c.ID = id }))
		add("ID "+what, variant(okMemberAlive, func(c *fsm.MemberAlive) { c.ID = id }))
		add("ID "+what, variant(okPeerRegister, func(c *fsm.PeerRegister) { c.ID = id }))
		add("ID "+what, fsm.PeerRemove{IDs: []string{id}})
		add("one ID among good ones "+what, fsm.PeerRemove{IDs: []string{"p1", id, "p2"}})
		add("peer ID "+what, variant(okTaskPeerState, func(c *fsm.TaskPeerState) { c.PeerID = id }))
		add("peer ID "+what, variant(okPieceReport, func(c *fsm.PieceReport) { c.PeerID = id }))
		add("member ID "+what, variant(okPiecesCached, func(c *fsm.PiecesCached) { c.MemberID = id }))
		add("ID "+what, variant(okPreheatCreate, func(c *fsm.PreheatCreate) { c.ID = id }))
		add("ID "+what, variant(okPreheatUpdate, func(c *fsm.PreheatUpdate) { c.ID = id }))
		if id != "" { // optional fields: empty means none
			add("peer ID "+what, variant(okTaskRegister, func(c *fsm.TaskRegister) { c.PeerID = id }))
			add("source "+what, variant(okPieceFailure, func(c *fsm.PieceReport) { c.Source = id }))
		}
	}
	for _, what := range slices.Sorted(maps.Keys(badTaskIDs)) {
		id := badTaskIDs[what]
		add("task ID "+what, variant(okTaskRegister, func(c *fsm.TaskRegister) { c.TaskID = id }))
		add("task ID "+what, variant(okTaskPeerState, func(c *fsm.TaskPeerState) { c.TaskID = id }))
		add("task ID "+what, variant(okTaskDelete, func(c *fsm.TaskDelete) { c.TaskID = id }))
		add("task ID "+what, variant(okPieceReport, func(c *fsm.PieceReport) { c.TaskID = id }))
		add("task ID "+what, variant(okTaskMeta, func(c *fsm.TaskMeta) { c.TaskID = id }))
		add("task ID "+what, variant(okPiecesCached, func(c *fsm.PiecesCached) { c.TaskID = id }))
	}

	// MemberUpsert
	for _, what := range slices.Sorted(maps.Keys(badAddrs)) {
		a := badAddrs[what]
		add("HTTP address "+what, variant(okMemberUpsert, func(c *fsm.MemberUpsert) { c.HTTPAddr = a }))
		add("Raft address "+what, variant(okMemberUpsert, func(c *fsm.MemberUpsert) { c.RaftAddr = a }))
	}
	// PeerRegister
	for _, what := range slices.Sorted(maps.Keys(badIPs)) {
		ip := badIPs[what]
		add("IP "+what, variant(okPeerRegister, func(c *fsm.PeerRegister) { c.IP = ip }))
	}
	add("port 0", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Port = 0 }))
	for _, what := range slices.Sorted(maps.Keys(badHostnames)) {
		hn := badHostnames[what]
		add("hostname "+what, variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Hostname = hn }))
	}
	// PeerRemove
	add("no IDs (nil)", fsm.PeerRemove{})
	add("no IDs (empty)", fsm.PeerRemove{IDs: []string{}})
	add("too many IDs", fsm.PeerRemove{IDs: append([]string{"p1"}, manyIDs(fsm.MaxPeersRemoved)...)})
	// TaskRegister
	for _, what := range slices.Sorted(maps.Keys(badDigests)) {
		d := badDigests[what]
		add("digest "+what, variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Digest = d }))
	}
	for _, what := range slices.Sorted(maps.Keys(badURLs)) {
		u := badURLs[what]
		add("URL "+what, variant(okTaskRegister, func(c *fsm.TaskRegister) { c.URL = u }))
	}
	for _, what := range slices.Sorted(maps.Keys(badHeaders)) {
		hs := badHeaders[what]
		add("headers "+what, variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Headers = hs }))
	}
	add("65 filter names", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Filter = manyIDs(fsm.MaxFilter + 1) }))
	add("empty filter name", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Filter = []string{""} }))
	add("filter name too long", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Filter = []string{strings.Repeat("f", fsm.MaxFilterName+1)} }))
	// TaskPeerState
	for _, st := range []fsm.PeerTaskState{fsm.PeerTaskFailed + 1, math.MaxUint8} {
		add(fmt.Sprintf("state %d", st), variant(okTaskPeerState, func(c *fsm.TaskPeerState) { c.State = st }))
	}
	// PieceReport
	for _, what := range slices.Sorted(maps.Keys(badSpans)) {
		sp := badSpans[what]
		add("spans "+what, variant(okPieceReport, func(c *fsm.PieceReport) { c.Spans = sp }))
		add("failure spans "+what, variant(okPieceFailure, func(c *fsm.PieceReport) { c.Spans = sp }))
	}
	// TaskMeta
	add("generation 0", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.Generation = 0 }))
	add("unknown status", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.Status = fsm.TaskFailed + 1 }))
	add("status 255", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.Status = math.MaxUint8 }))
	add("piece size -2", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceSize = -2 }))
	add("piece size MinInt64", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceSize = math.MinInt64 }))
	add("content length -2", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.ContentLength = -2 }))
	add("piece count -2", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceCount = -2 }))
	add("piece count past MaxPieceIndex+1", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceCount = api.MaxPieceIndex + 2 }))
	add("piece count MaxInt64", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceCount = math.MaxInt64 }))
	// PiecesCached
	add("no digests (nil)", variant(okPiecesCached, func(c *fsm.PiecesCached) { c.Digests = nil }))
	add("no digests (empty)", variant(okPiecesCached, func(c *fsm.PiecesCached) { c.Digests = [][32]byte{} }))
	add("last piece past MaxPieceIndex", variant(okPiecesCached, func(c *fsm.PiecesCached) { c.First = api.MaxPieceIndex }))
	add("first piece past MaxPieceIndex", variant(okPiecesCached, func(c *fsm.PiecesCached) { c.First = api.MaxPieceIndex + 1 }))
	add("first piece MaxUint32", variant(okPiecesCached, func(c *fsm.PiecesCached) { c.First = math.MaxUint32 }))
	// PreheatCreate
	for _, k := range []string{"", "File", "IMAGE", "files", "dir", "file "} {
		add(fmt.Sprintf("kind %q", k), variant(okPreheatCreate, func(c *fsm.PreheatCreate) { c.Kind = k }))
	}
	for _, what := range slices.Sorted(maps.Keys(badURLs)) {
		u := badURLs[what]
		add("URL "+what, variant(okPreheatCreate, func(c *fsm.PreheatCreate) { c.URL = u }))
	}
	for _, what := range slices.Sorted(maps.Keys(badHeaders)) {
		hs := badHeaders[what]
		add("headers "+what, variant(okPreheatCreate, func(c *fsm.PreheatCreate) { c.Headers = hs }))
	}
	// PreheatUpdate
	add("empty status", variant(okPreheatUpdate, func(c *fsm.PreheatUpdate) { c.Status = "" }))
	add("status of 33 bytes", variant(okPreheatUpdate, func(c *fsm.PreheatUpdate) { c.Status = strings.Repeat("s", 33) }))
	add("error of 4 KiB + 1", variant(okPreheatUpdate, func(c *fsm.PreheatUpdate) { c.Error = strings.Repeat("e", fsm.MaxErrorBytes+1) }))
	return out
}

// TestValidBasesApply guards TestInvalidCommandsAreRefused: each command its invalid ones
// derive from is accepted on the rich state and changes it.
func TestValidBasesApply(t *testing.T) {
	for _, c := range okBases() {
		h := newHarness(t)
		buildRich(h)
		before := h.hash()
		if r := h.one(c); r.Code != fsm.CodeOK && r.Code != fsm.CodeCreated {
			t.Errorf("%T %+v: code %d (%s), want success", c, c, r.Code, r.Msg)
		} else if h.hash() == before {
			t.Errorf("%T: did not change the rich state: its invalid variants prove nothing", c)
		}
	}
}

// TestInvalidCommandsAreRefused: a command that breaks a rule of validate.go is refused
// with CodeInvalid (an error wrapping ErrInvalid, with a message) and changes nothing, on a
// state where the same command without the fault would succeed.
func TestInvalidCommandsAreRefused(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	hash0, dump0 := h.hash(), dumpOf(h.f)
	cases := invalidCommands()
	covered := map[fsm.CommandType]bool{}
	for _, tc := range cases {
		covered[tc.cmd.Type()] = true
		var r fsm.Result
		if p := catch(func() { r = h.one(tc.cmd) }); p != nil {
			t.Fatalf("%s: Apply panicked: %v", tc.name, p)
		}
		if r.Code != fsm.CodeInvalid || r.N != 0 {
			t.Errorf("%s: Result{Code: %d, N: %d, Msg: %q}, want CodeInvalid", tc.name, r.Code, r.N, r.Msg)
		}
		checkErr(t, r)
		if got := h.hash(); got != hash0 {
			t.Fatalf("%s: refused, but the state hash changed", tc.name)
		}
	}
	for ct := fsm.CmdMemberUpsert; ct <= fsm.CmdPreheatUpdate; ct++ {
		if !covered[ct] {
			t.Errorf("command type %d has no invalid case", ct)
		}
	}
	d := dumpOf(h.f)
	d.Applied = dump0.Applied // the refused entries were applied (as refusals)
	diffDumps(t, d, dump0)
	if stateHash(h.replay()) != hash0 {
		t.Errorf("a replay of the log including the refused commands gives another state")
	}
	t.Logf("%d invalid commands refused", len(cases))
}

// TestRefusalDoesNotStopTheEntry: the commands of an entry around a refused one apply.
func TestRefusalDoesNotStopTheEntry(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	bad := variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Port = 0 })
	res := h.apply(okMemberUpsert, bad, okPreheatCreate)
	want := []fsm.Code{fsm.CodeCreated, fsm.CodeInvalid, fsm.CodeCreated}
	for i, c := range want {
		if res[i].Code != c {
			t.Errorf("command %d: code %d (%s), want %d", i, res[i].Code, res[i].Msg, c)
		}
	}
	if _, ok := h.f.Member(okMemberUpsert.ID); !ok {
		t.Errorf("member before the refused command not applied")
	}
	if _, ok := h.f.Peer(bad.ID); ok {
		t.Errorf("refused peer registered")
	}
	if _, ok := h.f.Preheat(okPreheatCreate.ID); !ok {
		t.Errorf("preheat after the refused command not applied")
	}
}

// TestCommandLimitsAreAccepted: the values at the edges of validate.go's rules are valid.
func TestCommandLimitsAreAccepted(t *testing.T) {
	idChars := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
	id128 := strings.Repeat(idChars, 2)[:128]
	url8k := "http://origin/" + strings.Repeat("x", fsm.MaxURLBytes-len("http://origin/"))
	headers16k := map[string]string{"A": strings.Repeat("v", 8191), "B": strings.Repeat("v", 8191)}
	cases := []namedCommand{
		{"member ID of 128 characters", variant(okMemberUpsert, func(c *fsm.MemberUpsert) { c.ID = id128 })},
		{"member ID of 1 character", variant(okMemberUpsert, func(c *fsm.MemberUpsert) { c.ID = "_" })},
		{"IPv6 and hostname addresses", variant(okMemberUpsert, func(c *fsm.MemberUpsert) {
			c.HTTPAddr, c.RaftAddr = "[fd00::4]:8002", "member-4.example:8003"
		})},
		{"address of 256 bytes", variant(okMemberUpsert, func(c *fsm.MemberUpsert) { c.HTTPAddr = strings.Repeat("h", 251) + ":8002" })},
		{"IPv6 peer", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.IP = "fd00::7" })},
		{"IPv4-mapped peer", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.IP = "::ffff:192.168.1.7" })},
		{"port 1", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Port = 1 })},
		{"port 65535", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Port = math.MaxUint16 })},
		{"hostname of 255 bytes", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Hostname = strings.Repeat("h", fsm.MaxHostnameLen) })},
		{"hostname of 1 byte", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Hostname = "h" })},
		{"hostname with spaces and non-ASCII", variant(okPeerRegister, func(c *fsm.PeerRegister) { c.Hostname = "nœud 7" })},
		{"10000 peers removed", fsm.PeerRemove{IDs: append([]string{"p1"}, manyIDs(fsm.MaxPeersRemoved-1)...)}},
		{"URL of 8 KiB", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.URL = url8k })},
		{"URL of 1 byte", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.URL = "u" })},
		{"no digest", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Digest = "" })},
		{"md5 digest", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Digest = md5Digest })},
		{"no peer", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.PeerID = "" })},
		{"64 headers", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Headers = manyHeaders(fsm.MaxHeaders) })},
		{"headers of 16 KiB", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Headers = headers16k })},
		{"header value with tab and empty value", variant(okTaskRegister, func(c *fsm.TaskRegister) {
			c.Headers = map[string]string{"X-A": "a\tb", "X-B": "", "!#$%&'*+-.^_`|~": "token chars"}
		})},
		{"64 filter names", variant(okTaskRegister, func(c *fsm.TaskRegister) { c.Filter = manyIDs(fsm.MaxFilter) })},
		{"peer task failed", variant(okTaskPeerState, func(c *fsm.TaskPeerState) { c.State = fsm.PeerTaskFailed })},
		{"span ending at MaxPieceIndex", variant(okPieceReport, func(c *fsm.PieceReport) { c.Spans = spansOf(0, 0, 2, api.MaxPieceIndex) })},
		{"sizes unknown", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceSize, c.ContentLength, c.PieceCount = -1, -1, -1 })},
		{"sizes 0", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceSize, c.ContentLength, c.PieceCount = 0, 0, 0 })},
		{"most pieces", variant(okTaskMeta, func(c *fsm.TaskMeta) { c.PieceCount, c.Status = api.MaxPieceIndex+1, fsm.TaskFailed })},
		{"cached up to MaxPieceIndex", variant(okPiecesCached, func(c *fsm.PiecesCached) { c.First = api.MaxPieceIndex - 1 })},
		{"image preheat", variant(okPreheatCreate, func(c *fsm.PreheatCreate) { c.Kind, c.URL = "image", url8k })},
		{"status of 32 bytes and error of 4 KiB", variant(okPreheatUpdate, func(c *fsm.PreheatUpdate) {
			c.Status, c.Error = strings.Repeat("s", 32), strings.Repeat("e", fsm.MaxErrorBytes)
		})},
	}
	for _, tc := range cases {
		h := newHarness(t)
		buildRich(h)
		if r := h.one(tc.cmd); r.Code != fsm.CodeOK && r.Code != fsm.CodeCreated {
			t.Errorf("%s: code %d (%s), want success", tc.name, r.Code, r.Msg)
		}
	}
}

// FuzzApply: whatever entry DecodeBatch accepts, applying its commands one by one to the
// rich state never panics (a committed entry would stop every member, on every replay), and
// a command that fails (CodeNotFound, CodeConflict, CodeInvalid) changes nothing.
func FuzzApply(f *testing.F) {
	for _, c := range okBases() {
		f.Add(fsm.Batch{UnixNano: 1, Commands: []fsm.Command{c}}.Encode())
	}
	f.Add(fsm.Batch{UnixNano: 1, Commands: validCommands()}.Encode())
	for _, c := range invalidCommands() {
		if p := (fsm.Batch{UnixNano: 1, Commands: []fsm.Command{c.cmd}}).Encode(); len(p) < 4<<10 {
			f.Add(p)
		}
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := fsm.DecodeBatch(p)
		if err != nil {
			return
		}
		h := newHarness(t)
		buildRich(h)
		for _, c := range b.Commands {
			before := h.hash()
			var r fsm.Result
			if pn := catch(func() { r = h.one(c) }); pn != nil {
				t.Fatalf("applying %#v panicked: %v", c, pn)
			}
			if sentinel(r.Code) != nil && h.hash() != before {
				t.Fatalf("%#v failed with code %d (%s) but changed the state", c, r.Code, r.Msg)
			}
		}
	})
}
