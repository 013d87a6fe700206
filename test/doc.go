// Package test holds the system tests of the supernode cluster: real members on 127.0.0.1
// (in-process through test/cluster, and as real processes), driven through the sdk and
// the HTTP API exactly as users drive them.
package test
