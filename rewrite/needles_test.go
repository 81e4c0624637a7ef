package rewrite

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"net/url"
	"testing"
)

// find: each form in which a sender hides the address in a URL, and a
// near miss of each.
func TestRecipientNeedlesFind(t *testing.T) {
	rn := newRecipientNeedles([]string{"Reader@Example.FR"})
	addr := "reader@example.fr"
	b64 := base64.StdEncoding.EncodeToString
	b64url := base64.RawURLEncoding.EncodeToString
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write([]byte(`{"email":"READER@example.fr","list":7}`))
	zw.Close()
	// A payload whose standard base64 holds a '/' ("az3/O3Jl…"): the run
	// is tried whole before it is split at its slashes.
	slashy := b64([]byte("k=\xff;reader@example.fr"))
	if !bytes.ContainsRune([]byte(slashy), '/') {
		t.Fatalf("%q holds no '/'", slashy)
	}
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"https://t.example/o?e=" + addr, true},
		{"https://t.example/o?e=READER%40EXAMPLE.FR", true},
		{"https://t.example/o?e=" + url.QueryEscape(url.QueryEscape(addr)), true},
		{"https://t.example/o/" + b64([]byte(addr)) + "/p.gif", true},
		{"https://t.example/o?d=" + b64([]byte("id=42;to=Reader@Example.fr")), true},
		{"https://t.example/o/" + b64url([]byte("\xff\xfe"+addr)), true},
		{"https://t.example/o?d=" + slashy, true},
		{"https://t.example/o/" + b64url(z.Bytes()), true},
		{"https://t.example/o?e=other@example.fr", false},
		{"https://t.example/o/" + b64([]byte("other@example.fr")), false},
		{"https://t.example/o/" + b64url([]byte("reader@example.com")), false},
		{"https://t.example/logo.png", false},
	} {
		if got := rn.find(tc.url); got != tc.want {
			t.Errorf("find(%q) = %v, want %v", tc.url, got, tc.want)
		}
	}
}
