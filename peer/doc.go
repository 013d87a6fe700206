// Package peer owns the peer engine that dfget (and later dfdaemon) runs: an upload server
// for the pieces the peer holds, piece workers that ask the cluster for work, download and
// verify pieces, and report them in batches through the sdk. It arrives with the dfget
// issue; until then the package has no code.
package peer
