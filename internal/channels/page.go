package channels

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"html/template"
	"net/http"
)

//go:embed page.html
var pageHTML string

// pageTemplate is the client page served on a plain GET: it opens a
// websocket to the same URL, shows every message and sends what the user
// types. html/template escapes the path; the script takes the URL from
// location and never sees the path as text. Nothing is loaded from
// elsewhere.
var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

func servePage(w http.ResponseWriter, r *http.Request, name string) error {
	var nb [16]byte
	rand.Read(nb[:])
	nonce := base64.RawStdEncoding.EncodeToString(nb[:])
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, struct{ Path, Nonce string }{name, nonce}); err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; connect-src 'self'; script-src 'nonce-"+nonce+"'; style-src 'nonce-"+nonce+"'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	_, err := w.Write(buf.Bytes())
	return err
}
