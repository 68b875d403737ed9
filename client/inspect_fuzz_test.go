package client_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postern/postern/client"
)

// FuzzInspectorRequest: whatever the method, path, Host, Origin and
// content type, the inspector answers without panicking, and a replay is
// attempted (here: 404, no request is kept) only for a POST whose Host is
// an address or localhost, whose content type is JSON and whose Origin,
// if any, is the inspector's own.
func FuzzInspectorRequest(f *testing.F) {
	f.Add("POST", "/api/requests/1/replay", "127.0.0.1:4040", "", "application/json")
	f.Add("POST", "/api/requests/1/replay", "localhost:4040", "http://localhost:4040", "application/json; charset=utf-8")
	f.Add("POST", "/api/requests/1/replay", "evil.example", "http://evil.example", "application/json")
	f.Add("GET", "/", "[::1]:4040", "", "")
	f.Add("POST", "/api/requests//replay", "127.0.0.1", "null", "text/plain")
	ins := client.NewInspector(client.InspectorOptions{})
	f.Fuzz(func(t *testing.T, method, path, host, origin, ctype string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path+host+method, " \r\n\t?#") || method == "" || host == "" {
			return
		}
		req, err := http.NewRequest(method, "http://x"+path, nil)
		if err != nil {
			return
		}
		req.Host = host
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		w := httptest.NewRecorder()
		ins.ServeHTTP(w, req)
		if w.Code == http.StatusNotFound && strings.HasPrefix(w.Body.String(), "no request") {
			if method != "POST" || !strings.HasPrefix(strings.ToLower(strings.TrimSpace(ctype)), "application/json") {
				t.Fatalf("a replay was attempted for %s with %q", method, ctype)
			}
			if origin != "" && origin != "http://"+host && origin != "https://"+host {
				t.Fatalf("a replay was attempted from origin %q on host %q", origin, host)
			}
		}
		if strings.ContainsAny(w.Body.String(), "\n") && w.Header().Get("Content-Type") == "text/plain; charset=utf-8" {
			t.Fatalf("an error on two lines: %q", w.Body.String())
		}
	})
}
