package client

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/postern/postern/internal/httpapi"
)

// outgoing is the request to the local service, rewritten as the agent's
// reverse proxy did: URL to the target, the public Host kept unless
// RewriteHost, X-Forwarded-* and Forwarded as the server set them,
// hop-by-hop headers dropped but for an upgrade's. It returns the
// upgrade asked for, if any. req was read from the stream and is the
// pair's own: out shares its header (nothing reads req's hop-by-hop
// headers afterwards) but not its URL, which the log shows.
func (p *pair) outgoing(req *http.Request) (*http.Request, string) {
	out := new(http.Request)
	*out = *req
	if out.Header == nil {
		out.Header = http.Header{}
	}
	te := httpapi.HasToken(req.Header["Te"], "trailers")
	u := *req.URL
	out.URL = &u
	out.URL.RawQuery = cleanQueryParams(out.URL.RawQuery)
	rewriteRequestURL(out, p.s.target)
	out.Host = ""
	if !p.s.o.RewriteHost {
		out.Host = req.Host
	}
	up := httpapi.UpgradeType(out.Header)
	httpapi.RemoveHopByHop(out.Header)
	if te {
		out.Header.Set("Te", "trailers")
	}
	if up != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", up)
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		// Request.Write would put in Go's own.
		out.Header["User-Agent"] = []string{""}
	}
	// The pair's local connection ends with the stream's: tell the local
	// service when this is the last request.
	out.Close = req.Close
	out.RequestURI = ""
	return out, up
}

// countingBody counts a response body's bytes for the log, and flushes

// rewriteRequestURL, joinURLPath, singleJoiningSlash and
// cleanQueryParams are ProxyRequest.SetURL's and ReverseProxy's.

func rewriteRequestURL(req *http.Request, target *url.URL) {
	targetQuery := target.RawQuery
	req.URL.Scheme = target.Scheme
	req.URL.Host = target.Host
	req.URL.Path, req.URL.RawPath = joinURLPath(target, req.URL)
	if targetQuery == "" || req.URL.RawQuery == "" {
		req.URL.RawQuery = targetQuery + req.URL.RawQuery
	} else {
		req.URL.RawQuery = targetQuery + "&" + req.URL.RawQuery
	}
}

func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath := a.EscapedPath()
	bpath := b.EscapedPath()
	aslash := strings.HasSuffix(apath, "/")
	bslash := strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash := strings.HasSuffix(a, "/")
	bslash := strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
