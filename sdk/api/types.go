package api

// Headers carried by every answer or request of the API.
const (
	// HeaderRaftIndex is set on every write answer: the Raft index the write was applied at.
	HeaderRaftIndex = "X-Raft-Index"
	// HeaderRaftLeader is set on every answer when the member knows the leader: its HTTP address.
	HeaderRaftLeader = "X-Raft-Leader"
	// HeaderForwarded marks a write a follower forwarded to the leader. A member that is not
	// the leader answers such a request with 503 instead of forwarding it again.
	HeaderForwarded = "X-Dfha-Forwarded"
	// QueryMinIndex makes a read wait (bounded) until the member has applied that index.
	QueryMinIndex = "min_index"
)

// Task statuses, as the cluster sees the task as a whole.
const (
	TaskPending = "pending" // registered; the owner has not probed the origin yet
	TaskRunning = "running" // the owner is fetching it from the origin
	TaskSuccess = "success" // every piece is cached
	TaskFailed  = "failed"  // the origin fetch failed
)

// Statuses a peer reports for its own download of a task, or for pieces.
const (
	StatusRunning = "running"
	StatusSuccess = "success"
	StatusFailed  = "failed"
)

// Error is the body of every 4xx and 5xx answer.
type Error struct {
	Error string `json:"error"`
}

// RegisterPeerRequest is the body of POST /peers. ID is optional: a peer that sends its own
// makes a retried registration idempotent.
type RegisterPeerRequest struct {
	ID       string `json:"id,omitempty"`
	IP       string `json:"ip"`
	Port     int    `json:"port"`
	Hostname string `json:"hostname"`
}

// RegisterPeerResponse answers POST /peers.
type RegisterPeerResponse struct {
	ID string `json:"id"`
}

// Peer answers GET /peers/{id}.
type Peer struct {
	ID       string   `json:"id"`
	IP       string   `json:"ip"`
	Port     int      `json:"port"`
	Hostname string   `json:"hostname"`
	Tasks    []string `json:"tasks"`
}

// Heartbeat is the body of PUT /peers/{id}/heartbeat.
type Heartbeat struct {
	UploadsRunning int `json:"uploads_running"`
}

// RegisterTaskRequest is the body of POST /tasks. Headers are sent to the origin and never
// returned by the API; Filter names query parameters left out of the task's identity.
type RegisterTaskRequest struct {
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers,omitempty"`
	Filter  []string          `json:"filter,omitempty"`
	Digest  string            `json:"digest,omitempty"`
	PeerID  string            `json:"peer_id"`
}

// Task answers POST /tasks and GET /tasks/{id}. Sizes and counts are -1 until the owner has
// probed the origin. PiecesCached and Peers are filled by GET /tasks/{id} only.
type Task struct {
	TaskID        string   `json:"task_id"`
	Generation    uint64   `json:"generation"`
	Status        string   `json:"status"`
	PieceSize     int64    `json:"piece_size"`
	ContentLength int64    `json:"content_length"`
	PieceCount    int64    `json:"piece_count"`
	Owners        []string `json:"owners"`
	PiecesCached  *int64   `json:"pieces_cached,omitempty"`
	Peers         *int64   `json:"peers,omitempty"`
}

// UpdateTaskRequest is the body of PUT /tasks/{id}: a peer's own progress on the task.
type UpdateTaskRequest struct {
	PeerID string `json:"peer_id"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// PieceReport is the body of PUT /tasks/{id}/pieces/{range}. Source is the ID of the peer or
// member the pieces came from; with status failed it names a source that sent bad data.
// Generation, when set, must be the task's current generation (else 409).
type PieceReport struct {
	PeerID     string `json:"peer_id"`
	Status     string `json:"status"`
	Source     string `json:"source,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
}

// PieceReportBatch is the body of PUT /tasks/{id}/pieces.
type PieceReportBatch struct {
	PeerID     string            `json:"peer_id"`
	Generation uint64            `json:"generation,omitempty"`
	Reports    []PieceReportItem `json:"reports"`
}

// PieceReportItem is one entry of a PieceReportBatch; Pieces is a piece range ("0-3,9").
type PieceReportItem struct {
	Pieces string `json:"pieces"`
	Status string `json:"status"`
	Source string `json:"source,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Member is one entry of GET /cluster/members.
type Member struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http_addr"`
	RaftAddr string `json:"raft_addr"`
	Leader   bool   `json:"leader"`
	Voter    bool   `json:"voter"`
	Alive    bool   `json:"alive"`
}

// JoinRequest is the body of POST /cluster/members (what --join sends).
type JoinRequest struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http_addr"`
	RaftAddr string `json:"raft_addr"`
}

// ClusterState answers GET /cluster/state. Members with equal StateHash hold equal
// replicated state.
type ClusterState struct {
	AppliedIndex uint64 `json:"applied_index"`
	StateHash    string `json:"state_hash"`
}

// Scheduling: GET /tasks/{id}/pieces?peer_id=P&limit=N answers which pieces a peer should
// fetch next and from where.
const (
	// QueryPeerID names the asking peer.
	QueryPeerID = "peer_id"
	// QueryLimit bounds the pieces of the answer (default 16, at most MaxScheduleLimit).
	QueryLimit = "limit"
	// QueryMode is "rarest" (default: rarest pieces first) or "stream" (a window in order,
	// from QueryFrom on, for a peer that writes the file to a pipe).
	QueryMode = "mode"
	// QueryFrom is the first piece of a stream-mode window.
	QueryFrom = "from"
	// QueryExclude lists sources (peer or member IDs, comma-separated) the peer will not use.
	QueryExclude = "exclude"

	ModeRarest = "rarest"
	ModeStream = "stream"

	// MaxScheduleLimit is the largest limit a scheduling request may ask for.
	MaxScheduleLimit = 256
	// MaxExclude is the largest number of sources one scheduling request may exclude.
	MaxExclude = 64

	// HeaderUploadSlots answers a heartbeat: how many uploads the peer should serve at once.
	HeaderUploadSlots = "X-Dfha-Upload-Slots"
)

// Source kinds of a scheduled piece.
const (
	SourcePeer   = "peer"
	SourceMember = "member"
)

// ScheduleQuery is what a peer asks for work with.
type ScheduleQuery struct {
	PeerID  string
	Limit   int
	Mode    string   // ModeRarest (default) or ModeStream
	From    uint32   // stream mode: the first piece the peer still needs
	Exclude []string // sources the peer has blacklisted itself
}

// Schedule answers GET /tasks/{id}/pieces. Done is true when the peer holds every piece.
// Until the owner has probed the origin, sizes are -1 and Pieces is empty.
type Schedule struct {
	Status        string           `json:"status"`
	Generation    uint64           `json:"generation"`
	PieceSize     int64            `json:"piece_size"`
	ContentLength int64            `json:"content_length"`
	PieceCount    int64            `json:"piece_count"`
	Done          bool             `json:"done"`
	Pieces        []ScheduledPiece `json:"pieces"`
}

// ScheduledPiece is a piece to fetch: its size, its digest ("sha256:HEX") and its sources,
// least loaded first, peers before members.
type ScheduledPiece struct {
	N       uint32        `json:"n"`
	Size    int64         `json:"size"`
	Digest  string        `json:"digest"`
	Sources []PieceSource `json:"sources"`
}

// PieceSource is where a piece can be fetched. A peer serves it at
// http://ADDR/pieces/{task_id}/{n}; a member at http://ADDR/tasks/{task_id}/pieces/{n}/data.
type PieceSource struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
	Addr string `json:"addr"`
}
