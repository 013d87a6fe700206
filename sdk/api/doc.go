// Package api holds the supernode HTTP API's wire contract: the JSON request and response
// types, the header names, and the identifier rules (task IDs from canonical URLs, peer and
// member IDs, piece ranges). The server and the sdk client both use it, so the two cannot drift.
package api
