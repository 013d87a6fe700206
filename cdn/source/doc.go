// Package source owns how a supernode member reads a task's file from its origin: the Source
// interface, its http/https and file:// implementations, the registry that picks one by URL
// scheme (Sources), and a reader that reads a whole file once, resuming after a broken
// connection (NewResumingReader).
//
// Decisions worth knowing:
//
//   - The origin is reached with the standard net/http client: arbitrary servers, redirects
//     (up to 10), TLS verified against the system roots, proxies from the environment, HTTP/2.
//     The client has no overall timeout (bodies are large); a dial timeout, a response header
//     timeout and a body idle timeout (Config.ReadIdleTimeout) stop a dead origin instead.
//   - Bytes are the origin's bytes: requests ask for Accept-Encoding: identity and the
//     transport never decompresses, so byte offsets, Range and lengths all mean the same file.
//   - A file is identified by Info (length, ETag, Last-Modified). Every response is checked
//     against what the caller expects (Info.Changed), so a file that changes between two
//     requests fails with ErrChanged instead of producing a file made of two versions.
//   - Resuming needs a 206 whose Content-Range starts exactly at the requested offset; an
//     origin that answers 200 to a Range request fails with ErrNoRange rather than sending the
//     file again from its start.
//   - One rate.Limiter (Config.Limiter) paces every body read by every source of a member, in
//     chunks no larger than its burst. Probes are not paced (they carry no body).
//   - Request headers may hold credentials: they are sent to the origin and never logged nor
//     put in errors; URLs in logs and errors lose their user info and query string.
package source
