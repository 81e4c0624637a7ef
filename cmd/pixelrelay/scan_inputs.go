package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// scanInput is one file (or stdin) to scan. A file can hold one message,
// an mbox of many, or bare HTML.
type scanInput struct {
	path  string // as shown in "source"
	size  int64  // for the progress indicator; -1 when unknown
	stdin bool
	err   error // set when the path itself could not be read
}

// collectInputs expands the command-line paths: directories are walked
// recursively in lexical order; in a Maildir only cur/ and new/ hold
// messages (tmp/ holds deliveries in progress), and its Maildir++ folders
// (".Sent") are walked although hidden names are skipped elsewhere.
func collectInputs(paths []string) []scanInput {
	var out []scanInput
	for _, p := range paths {
		if p == "-" {
			out = append(out, scanInput{path: "-", size: -1, stdin: true})
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			out = append(out, scanInput{path: p, err: err})
			continue
		}
		if !st.IsDir() {
			out = append(out, scanInput{path: p, size: st.Size()})
			continue
		}
		maildirs := map[string]bool{}
		isMaildir := func(dir string) bool {
			v, ok := maildirs[dir]
			if !ok {
				v = isDir(filepath.Join(dir, "cur")) && isDir(filepath.Join(dir, "new"))
				maildirs[dir] = v
			}
			return v
		}
		werr := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				out = append(out, scanInput{path: path, err: err})
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if path == p {
				return nil
			}
			parent := filepath.Dir(path)
			name := d.Name()
			if d.IsDir() {
				if name == "tmp" && isMaildir(parent) {
					return fs.SkipDir
				}
				if strings.HasPrefix(name, ".") && !(isMaildir(parent) && isMaildir(path)) {
					return fs.SkipDir
				}
				return nil
			}
			if strings.HasPrefix(name, ".") || !d.Type().IsRegular() {
				return nil
			}
			if isMaildir(parent) {
				return nil // dovecot-uidlist, maildirfolder and the like
			}
			info, err := d.Info()
			if err != nil {
				out = append(out, scanInput{path: path, err: err})
				return nil
			}
			out = append(out, scanInput{path: path, size: info.Size()})
			return nil
		})
		if werr != nil {
			out = append(out, scanInput{path: p, err: werr})
		}
	}
	return out
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// inputKind sorts a file by its first bytes.
type inputKind int

const (
	kindMessage inputKind = iota
	kindMbox
	kindHTML
)

func sniff(br *bufio.Reader) inputKind {
	head, _ := br.Peek(4096)
	if bytes.HasPrefix(head, []byte("From ")) {
		return kindMbox
	}
	t := bytes.TrimLeft(head, " \t\r\n\f\xef\xbb\xbf")
	if len(t) > 0 && t[0] == '<' {
		return kindHTML
	}
	if bytes.HasPrefix(head, []byte{0xFF, 0xFE, '<'}) || bytes.HasPrefix(head, []byte{0xFE, 0xFF, 0, '<'}) {
		return kindHTML
	}
	return kindMessage
}

// htmlAsMessage wraps bare HTML as a one-part text/html message. UTF-8 is
// assumed unless the file starts with a byte-order mark, which the rewrite
// engine honours.
func htmlAsMessage(r io.Reader) io.Reader {
	return io.MultiReader(strings.NewReader("Content-Type: text/html; charset=utf-8\r\n\r\n"), r)
}

// mboxReader splits an mbox into messages at "From " lines that start the
// file or follow an empty line, without holding a message in memory.
// Quoted ">From " lines are left as they are: they do not matter to
// tracker detection.
type mboxReader struct {
	br        *bufio.Reader
	cur       []byte // unread rest of the current line
	prevBlank bool
	midLine   bool
	ended     bool // the current message ended at a separator
	skipRest  bool // the separator line was only partly read
	eof       bool
	err       error
}

func newMboxReader(br *bufio.Reader) *mboxReader {
	m := &mboxReader{br: br, skipRest: true, ended: true}
	return m
}

// next returns a reader over the next message, or nil when there is none.
func (m *mboxReader) next() io.Reader {
	if !m.ended {
		return nil // the previous message was not read to its end
	}
	for m.skipRest && !m.eof {
		_, err := m.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			continue
		}
		m.skipRest = false
		m.setErr(err)
	}
	m.skipRest, m.ended, m.prevBlank, m.midLine = false, false, false, false
	if m.eof {
		if _, err := m.br.Peek(1); err != nil {
			return nil
		}
	}
	if _, err := m.br.Peek(1); err != nil {
		m.setErr(err)
		return nil
	}
	return mboxMessage{m}
}

func (m *mboxReader) setErr(err error) {
	if err != nil && err != bufio.ErrBufferFull {
		m.eof = true
		if !errors.Is(err, io.EOF) && m.err == nil {
			m.err = err
		}
	}
}

type mboxMessage struct{ m *mboxReader }

func (r mboxMessage) Read(p []byte) (int, error) {
	m := r.m
	for len(m.cur) == 0 {
		if m.ended || m.eof {
			if m.err != nil {
				return 0, m.err
			}
			m.ended = true
			return 0, io.EOF
		}
		b, err := m.br.ReadSlice('\n')
		start := !m.midLine
		m.midLine = err == bufio.ErrBufferFull
		m.setErr(err)
		if start && m.prevBlank && bytes.HasPrefix(b, []byte("From ")) {
			m.ended = true
			m.skipRest = m.midLine
			m.midLine = false
			return 0, io.EOF
		}
		if !m.midLine {
			m.prevBlank = bytes.Equal(b, []byte("\n")) || bytes.Equal(b, []byte("\r\n"))
		}
		m.cur = b
	}
	n := copy(p, m.cur)
	m.cur = m.cur[n:]
	return n, nil
}
