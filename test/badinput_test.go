package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// rawCall sends one HTTP request and returns the status and the decoded error message. Like
// any client it retries a 503 (an election under way) for a bounded time.
func rawCall(t *testing.T, method, url, body string, header map[string]string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, msg := rawCallOnce(t, method, url, body, header)
		if status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return status, msg
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func rawCallOnce(t *testing.T, method, url, body string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	p, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var e api.Error
		if err := json.Unmarshal(p, &e); err != nil || e.Error == "" {
			t.Fatalf("%s %s: %d with a body that is not {\"error\": ...}: %q", method, url, resp.StatusCode, p)
		}
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, ""
}

func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl := c.Client()
	mustRegisterPeer(t, ctx, cl, "good-peer", 1)
	taskID := mustRegisterTask(t, ctx, cl, "http://127.0.0.1:9/file", "good-peer")
	// Nothing listens at that origin: the owner marks the task failed; let that settle.
	if !tc.Eventually(10*time.Second, func() bool { task, err := cl.GetTask(ctx, taskID); return err == nil && task.Status == "failed" }) {
		t.Fatal("the task of an unreachable origin did not settle as failed")
	}
	before := c.WaitConverged(10 * time.Second)

	tooManyReports := `{"peer_id":"good-peer","reports":[` + strings.TrimSuffix(strings.Repeat(`{"pieces":"1","status":"success"},`, 1025), ",") + `]}`
	tid := "/tasks/" + taskID
	cases := []struct {
		name, method, path, body string
		want                     int
	}{
		{"peer: malformed json", "POST", "/peers", `{"ip":`, 400},
		{"peer: empty body", "POST", "/peers", ``, 400},
		{"peer: not an object", "POST", "/peers", `[1,2]`, 400},
		{"peer: bad id", "POST", "/peers", `{"id":"a/b","ip":"127.0.0.1","port":1,"hostname":"h"}`, 400},
		{"peer: id too long", "POST", "/peers", `{"id":"` + strings.Repeat("a", 129) + `","ip":"127.0.0.1","port":1,"hostname":"h"}`, 400},
		{"peer: bad ip", "POST", "/peers", `{"ip":"999.1.1.1","port":1,"hostname":"h"}`, 400},
		{"peer: unspecified ip", "POST", "/peers", `{"ip":"0.0.0.0","port":1,"hostname":"h"}`, 400},
		{"peer: port 0", "POST", "/peers", `{"ip":"127.0.0.1","port":0,"hostname":"h"}`, 400},
		{"peer: port too big", "POST", "/peers", `{"ip":"127.0.0.1","port":70000,"hostname":"h"}`, 400},
		{"peer: no hostname", "POST", "/peers", `{"ip":"127.0.0.1","port":1}`, 400},
		{"get peer: path-like id", "GET", "/peers/..%2F..%2Fetc", "", 400},
		{"get peer: unknown", "GET", "/peers/nobody", "", 404},
		{"get peer: bad min_index", "GET", "/peers/good-peer?min_index=-1", "", 400},
		{"heartbeat: unknown peer", "PUT", "/peers/nobody/heartbeat", `{"uploads_running":1}`, 404},
		{"heartbeat: negative", "PUT", "/peers/good-peer/heartbeat", `{"uploads_running":-1}`, 400},
		{"heartbeat: malformed", "PUT", "/peers/good-peer/heartbeat", `{`, 400},
		{"delete peer: unknown", "DELETE", "/peers/nobody", "", 404},
		{"delete peer: bad id", "DELETE", "/peers/a%20b", "", 400},
		{"task: no url", "POST", "/tasks", `{"peer_id":"good-peer"}`, 400},
		{"task: ftp url", "POST", "/tasks", `{"url":"ftp://x/y","peer_id":"good-peer"}`, 400},
		{"task: relative url", "POST", "/tasks", `{"url":"/etc/passwd","peer_id":"good-peer"}`, 400},
		{"task: bad digest", "POST", "/tasks", `{"url":"http://127.0.0.1:9/x","peer_id":"good-peer","digest":"sha256:zz"}`, 400},
		{"task: header with newline", "POST", "/tasks", `{"url":"http://127.0.0.1:9/x","peer_id":"good-peer","headers":{"X":"a\r\nB: c"}}`, 400},
		{"task: no peer", "POST", "/tasks", `{"url":"http://127.0.0.1:9/x"}`, 400},
		{"task: unknown peer", "POST", "/tasks", `{"url":"http://127.0.0.1:9/new","peer_id":"nobody"}`, 404},
		{"task: malformed", "POST", "/tasks", `{"url":1}`, 400},
		{"get task: short id", "GET", "/tasks/abc", "", 400},
		{"get task: uppercase id", "GET", "/tasks/" + strings.ToUpper(taskID), "", 400},
		{"get task: path-like", "GET", "/tasks/..%2F..%2Fetc%2Fpasswd", "", 400},
		{"get task: unknown", "GET", "/tasks/" + strings.Repeat("0", 64), "", 404},
		{"update task: bad status", "PUT", tid, `{"peer_id":"good-peer","status":"done"}`, 400},
		{"update task: unknown peer", "PUT", tid, `{"peer_id":"nobody","status":"running"}`, 404},
		{"update task: unknown task", "PUT", "/tasks/" + strings.Repeat("1", 64), `{"peer_id":"good-peer","status":"running"}`, 404},
		{"delete task: unknown", "DELETE", "/tasks/" + strings.Repeat("2", 64), "", 404},
		{"delete task: bad id", "DELETE", "/tasks/xyz", "", 400},
		{"report: bad range", "PUT", tid + "/pieces/5-2", `{"peer_id":"good-peer","status":"success"}`, 400},
		{"report: range not numeric", "PUT", tid + "/pieces/a-b", `{"peer_id":"good-peer","status":"success"}`, 400},
		{"report: negative piece", "PUT", tid + "/pieces/-1", `{"peer_id":"good-peer","status":"success"}`, 400},
		{"report: piece too big", "PUT", tid + "/pieces/99999999", `{"peer_id":"good-peer","status":"success"}`, 400},
		{"report: empty part", "PUT", tid + "/pieces/1,,2", `{"peer_id":"good-peer","status":"success"}`, 400},
		{"report: bad status", "PUT", tid + "/pieces/1", `{"peer_id":"good-peer","status":"ok"}`, 400},
		{"report: bad source", "PUT", tid + "/pieces/1", `{"peer_id":"good-peer","status":"failed","source":"a b"}`, 400},
		{"report: unknown peer", "PUT", tid + "/pieces/1", `{"peer_id":"nobody","status":"success"}`, 404},
		{"report: unknown task", "PUT", "/tasks/" + strings.Repeat("3", 64) + "/pieces/1", `{"peer_id":"good-peer","status":"success"}`, 404},
		{"report: wrong generation", "PUT", tid + "/pieces/1", `{"peer_id":"good-peer","status":"success","generation":7}`, 409},
		{"batch: no reports", "PUT", tid + "/pieces", `{"peer_id":"good-peer","reports":[]}`, 400},
		{"batch: too many reports", "PUT", tid + "/pieces", tooManyReports, 400},
		{"batch: one bad range", "PUT", tid + "/pieces", `{"peer_id":"good-peer","reports":[{"pieces":"1","status":"success"},{"pieces":"x","status":"success"}]}`, 400},
		{"join: bad id", "POST", "/cluster/members", `{"id":"","http_addr":"127.0.0.1:1","raft_addr":"127.0.0.1:2"}`, 400},
		{"join: unspecified addr", "POST", "/cluster/members", `{"id":"mx","http_addr":"0.0.0.0:1","raft_addr":"127.0.0.1:2"}`, 400},
		{"join: no port", "POST", "/cluster/members", `{"id":"mx","http_addr":"127.0.0.1","raft_addr":"127.0.0.1:2"}`, 400},
		{"join: address of another member", "POST", "/cluster/members", `{"id":"mx","http_addr":"127.0.0.1:1","raft_addr":"` + c.Member(1).RaftAddr() + `"}`, 409},
		{"remove: unknown member", "DELETE", "/cluster/members/nobody", "", 404},
		{"state: bad min_index", "GET", "/cluster/state?min_index=x", "", 400},
		{"no such route", "GET", "/nothing/here", "", 404},
		{"wrong method", "PATCH", "/peers", "", 405},
		{"internal route without the member header", "POST", "/internal/v1/apply", "xx", 400},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			for _, i := range c.Running() { // every member answers alike
				got, msg := rawCall(t, tt.method, "http://"+c.HTTPAddr(i)+tt.path, tt.body, nil)
				if got != tt.want {
					t.Fatalf("member %d: %s %s: %d (%s), want %d", i, tt.method, tt.path, got, msg, tt.want)
				}
			}
		})
	}
	// A body over the limit is refused from its Content-Length, before it is read.
	for _, i := range c.Running() {
		status, body := hugeBody(t, c.HTTPAddr(i), 64<<20)
		if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, `"error"`) {
			t.Fatalf("member %d: a 64 MiB body got %d %q, want 413 with a JSON error", i, status, body)
		}
	}
	after := c.WaitConverged(10 * time.Second)
	if after != before {
		t.Fatalf("bad input changed the state: %s -> %s", before, after)
	}
	// Good input still works after all that.
	status, msg := rawCall(t, "PUT", "http://"+c.HTTPAddr(0)+tid+"/pieces/0-3", `{"peer_id":"good-peer","status":"success"}`, nil)
	if status != 204 {
		t.Fatalf("good report after bad input: %d %s", status, msg)
	}
}

// hugeBody announces a body of size bytes to POST /peers, sends none of it, and returns the
// status and body of the answer.
func hugeBody(t *testing.T, addr string, size int) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /peers HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", addr, size)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to an oversized body: %v", err)
	}
	defer resp.Body.Close()
	p, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(p)
}

func TestTokenGuardsClusterChanges(t *testing.T) {
	const token = "s3cret-token"
	c := tc.New(t, 3, tc.Options{Token: token})
	addr := "http://" + c.HTTPAddr(1)
	peer := `{"id":"tp","ip":"127.0.0.1","port":1,"hostname":"h"}`
	guarded := []struct{ method, path, body string }{
		{"POST", "/peers", peer},
		{"POST", "/cluster/members", `{"id":"mx","http_addr":"127.0.0.1:1","raft_addr":"127.0.0.1:2"}`},
		{"DELETE", "/cluster/members/m2", ""},
		{"DELETE", "/tasks/" + strings.Repeat("a", 64), ""},
		{"POST", "/internal/v1/apply", "x"},
	}
	for _, g := range guarded {
		for _, auth := range []map[string]string{nil, {"Authorization": "Bearer wrong"}, {"Authorization": token}} {
			if got, _ := rawCall(t, g.method, addr+g.path, g.body, auth); got != http.StatusUnauthorized {
				t.Fatalf("%s %s with %v: %d, want 401", g.method, g.path, auth, got)
			}
		}
	}
	// With the token: registered (through a follower, which forwards with its own token),
	// and readable by anyone.
	cl := c.Client()
	if _, err := cl.RegisterPeer(context.Background(), peerReq("tp", 1)); err != nil {
		t.Fatalf("registration with the token: %v", err)
	}
	if p, err := cl.GetPeer(context.Background(), "tp"); err != nil || p.ID != "tp" {
		t.Fatalf("read after registration: %+v %v", p, err)
	}
	ms, err := c.Client().Members(context.Background())
	if err != nil || len(ms) != 3 {
		t.Fatalf("members with token: %v %v", ms, err)
	}
}
