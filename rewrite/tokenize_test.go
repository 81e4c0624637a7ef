package rewrite

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// tokenStream is a tokenizer's output: each token's type and raw length,
// up to and including the first ErrorToken.
func tokenStream(next func() (html.TokenType, int)) []string {
	var out []string
	for i := 0; ; i++ {
		tt, n := next()
		out = append(out, fmt.Sprintf("%v:%d", tt, n))
		if tt == html.ErrorToken || i > 1<<20 {
			return out
		}
	}
}

// checkSameTokens fails unless the tokenizer and x/net/html's Tokenizer
// split b into the same tokens.
func checkSameTokens(t *testing.T, b []byte) {
	t.Helper()
	z := html.NewTokenizer(bytes.NewReader(b))
	want := tokenStream(func() (html.TokenType, int) { tt := z.Next(); return tt, len(z.Raw()) })
	got := tokenStream(newTokenizer(b).next)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Fatalf("%q: token %d differs: x/net/html %s, ours %v\nx/net/html: %v\nours:       %v", b, i, want[i], got[i:min(i+1, len(got))], want, got)
			}
		}
		t.Fatalf("%q: ours has more tokens: %v, x/net/html %v", b, got, want)
	}
}

var tokenizerCases = []string{
	"", "a", "<", "<<", "a<", "a<b", "<a", "<a>", "<a >", "<a/>", "<a/", "</", "</>", "</a", "</a>", "</ a>", "</1>", "</a b='>'>",
	"<!", "<!-", "<!--", "<!-->", "<!--->", "<!---->", "<!-- x -->", "<!-- x --!>", "<!-- x --!-->", "<!-- x --!x>", "<!-- x -- >-->",
	"<!--x--", "<!--x--!", "<!--x-",
	// Comment ends that hang on "--!" swallowing the next byte, and on
	// runs of dashes at the start (commentEnd jumps from ">" to ">").
	"<!--!-->", "<!--!->x-->", "<!----!>", "<!--a--!->b-->", "<!--a--!--!>c", "<!--a--!!>b-->", "<!--a---!>b", "<!--a-!>b-->",
	"<!--a--!-!>b-->", "<!---!-->", "<!---a>b-->", "<!-- a > b -- > c --->", "<!--a--!", "<!--a--!-", "<!-->>", "<!doctype html>", "<!DOCTYPE", "<!DOCTYP", "<!DOCTYPE html", "<!doctypehtml>", "<!x>", "<!x", "<?xml?>", "<?",
	"<p a=/>", "<p a = / >", "<p a=/ a=/>", "<p a=x a=/>", "<p A=x a=/>", "<p a='/'/>", "<p a/>", "<p a=>", "<p a= >", "<p =a>", "<p ==a>",
	"<p a=\"x>y\">z", "<p a='x>y'>z", "<p a=x\"y>z", "<p a\"b>z", "<p\ta\n=\fb\r>", "<p a=\"x", "<p a='", "<p a=x", "<p a=", "<p a", "<p ",
	"<style>a</style>", "<style>a</STYLE >b", "<style>a</stylex></style>", "<style></style>", "<style/>x</style>", "<style>a</sty", "<style>a</",
	"<style>a<", "<style>", "<style>a</style", "<title>&amp;</title>", "<textarea><b></textarea>", "<xmp><a></xmp>", "<iframe><a></iframe>",
	"<noscript><img src=x></noscript>", "<noembed>a</noembed>", "<noframes>a</noframes>", "<plaintext><a></plaintext>", "<plaintext>",
	"<script>a</script>b", "<script><!--<script>--></script></script>b", "<script>", "<script>a", "<script/>x</script>y", "<SCRIPT>x</script>",
	"<style></st</style>", "<style><</style>", "<style>a</style\x00>", "<a\x00b>", "<img src=\"x\"\x00>", "<a\xff>", "<\xffa>",
	"<!--[if mso]><v:rect><![endif]-->", "<![CDATA[x]]>", "<p/a=b>", "<p/ a>", "<p a/b>", "<br/ >", "<br / >",
}

func TestTokenizerMatchesXNetHTML(t *testing.T) {
	for _, c := range tokenizerCases {
		checkSameTokens(t, []byte(c))
	}
}

// TestTokenizerMatchesOnFixtures compares the two on every HTML file this
// repository and the shared corpus hold.
func TestTokenizerMatchesOnFixtures(t *testing.T) {
	corpus := corpusDir(t)
	var files []string
	for _, pat := range []string{"../testdata/*/*", corpus + "/*/*", corpus + "/*/*/*"} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a directory
		}
		checkSameTokens(t, b)
		n++
	}
	t.Logf("%d files compared", n)
	if n < 50 {
		t.Fatalf("only %d files compared: fixtures or the shared corpus are missing", n)
	}
}

// FuzzTokenizer holds the tokenizer to x/net/html's token stream.
func FuzzTokenizer(f *testing.F) {
	for _, c := range tokenizerCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkSameTokens(t, b)
	})
}
