//go:build !linux

package main

import "errors"

func dropCache(string) error { return errors.New("cold-cache runs need Linux (posix_fadvise)") }
