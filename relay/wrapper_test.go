package relay

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// goSMTPReader reads a client's stream the way go-smtp v0.25.1's command
// loop does (server.go handleConn, parse.go parseCmd, conn.go handleData
// and handleBdat), with nothing refused: command lines; after a DATA line,
// a 354 and then the message up to go-smtp's end-of-data line; after a
// BDAT line, exactly the declared chunk. It returns what go-smtp's handlers
// would see, one entry each, and how the stream ended. It is written apart
// from the connection wrapper, so that the wrapper can be held to it.
//
// AUTH is modelled too (conn.go handleAuth, the relay's mechanisms PLAIN
// and LOGIN, auth.go), as on a listener that offers AUTH in clear: a users
// file with the one user app:s3cret and allow_insecure_auth, as in
// auth_wrapper_test.go. go-smtp refuses AUTH before a HELO/EHLO, after a
// successful AUTH, without a mechanism, with an unknown one or an initial
// response that is not base64, all without a 334; otherwise it answers 334
// and reads the next line as a SASL response, not a command ("sasl: "
// entries), until the mechanism is done, fails, or the client sends "*".
//
// reply receives the replies the wrapper watches (354, 220, 334). direct, when
// set, may return a reader for a message, as the session reads one when the
// wrapper allows it. model, when set, makes this the model of the wrapper
// rather than go-smtp behind it: command lines go through fixORCPTLine and
// the stream ends at the first line over max, as the wrapper ends it.
func goSMTPReader(r *bufio.Reader, reply func(string), direct func() io.Reader, model bool, max int) []string {
	var seen []string
	// readLine is go-smtp's readLine (textproto), or end says how the
	// stream ended.
	readLine := func() (line, end string) {
		raw, err := readRawLine(r)
		if err != nil {
			if model && len(raw) > max+1 {
				err = smtp.ErrTooLongLine
			}
			return "", "end: " + err.Error()
		}
		if model && len(raw)-2 > max {
			return "", "end: " + smtp.ErrTooLongLine.Error()
		}
		// textproto.ReadLine drops "\n" and then one "\r".
		return strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r"), ""
	}
	helo, didAuth := false, false
	for {
		line, end := readLine()
		if end != "" {
			return append(seen, end)
		}
		cmd, arg, ok := goSMTPParse(line)
		if model {
			fixed, _ := fixORCPTLine([]byte(line))
			line = string(fixed)
		}
		switch {
		case !ok:
			seen = append(seen, "bad: "+line)
		case cmd == "STARTTLS":
			// What follows is a TLS handshake: the model ends here.
			reply("220 2.0.0 Ready to start TLS\r\n")
			return append(seen, "STARTTLS")
		case cmd == "DATA" && arg == "":
			reply("354 Go ahead\r\n")
			var msg []byte
			if direct != nil {
				if d := direct(); d != nil {
					var err error
					if msg, err = io.ReadAll(d); err != nil {
						return append(seen, fmt.Sprintf("message %q, then %v", msg, eofOf(err)))
					}
				}
			}
			rest, done := refDataStream(r)
			msg = append(msg, rest...)
			if !done {
				return append(seen, fmt.Sprintf("message %q, then EOF", msg))
			}
			seen = append(seen, fmt.Sprintf("message %q", msg))
		case cmd == "BDAT":
			seen = append(seen, "command: "+line)
			args := strings.Fields(arg)
			if len(args) == 0 || len(args) > 2 || len(args) == 2 && !strings.EqualFold(args[1], "LAST") {
				continue
			}
			size, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil {
				continue
			}
			var chunk bytes.Buffer
			if _, err := io.CopyN(&chunk, r, int64(size)); err != nil {
				return append(seen, fmt.Sprintf("chunk %q, then %v", chunk.Bytes(), eofOf(err)))
			}
			seen = append(seen, fmt.Sprintf("chunk %q", chunk.Bytes()))
		case cmd == "AUTH":
			seen = append(seen, "command: "+line)
			if end := goSMTPAuth(arg, helo, &didAuth, reply, readLine, &seen); end != "" {
				return append(seen, end)
			}
		default:
			if (cmd == "HELO" || cmd == "EHLO") && arg != "" {
				// handleGreet: parseHelloArgument takes the first word
				// of the (trimmed) argument, which is then not empty.
				helo = true
			}
			seen = append(seen, "command: "+line)
		}
	}
}

// goSMTPAuth is go-smtp's handleAuth behind the relay's Auth (auth.go),
// with AUTH allowed in clear and the one user app:s3cret. It reads the
// SASL responses with readLine and records them in seen; end is set when
// the stream ended during the exchange.
func goSMTPAuth(arg string, helo bool, didAuth *bool, reply func(string), readLine func() (string, string), seen *[]string) (end string) {
	if !helo {
		reply("502 5.5.1 Please introduce yourself first.\r\n")
		return ""
	}
	if *didAuth {
		reply("503 5.5.1 Already authenticated\r\n")
		return ""
	}
	parts := strings.Fields(arg)
	if len(parts) == 0 {
		reply("502 5.5.4 Missing parameter\r\n")
		return ""
	}
	// authAllowed: allow_insecure_auth.
	var ir []byte
	if len(parts) > 1 {
		var err error
		if ir, err = goSMTPDecodeSASL(parts[1]); err != nil {
			reply("454 4.7.0 Invalid base64 data\r\n")
			return ""
		}
	}
	check := func(identity, user, pass string) error {
		if identity != "" && identity != user || user != "app" || pass != "s3cret" {
			return smtp.ErrAuthFailed
		}
		return nil
	}
	var server sasl.Server
	switch strings.ToUpper(parts[0]) {
	case sasl.Plain:
		server = sasl.NewPlainServer(check)
	case sasl.Login:
		server = &loginServer{auth: func(user, pass string) error { return check("", user, pass) }}
	default:
		reply("504 5.7.4 Unsupported authentication mechanism\r\n")
		return ""
	}
	response := ir
	for {
		challenge, done, err := server.Next(response)
		if err != nil {
			reply("454 4.7.0 " + err.Error() + "\r\n")
			return ""
		}
		if done {
			break
		}
		encoded := ""
		if len(challenge) > 0 {
			encoded = base64.StdEncoding.EncodeToString(challenge)
		}
		reply("334 " + encoded + "\r\n")
		line, end := readLine()
		if end != "" {
			return end
		}
		*seen = append(*seen, "sasl: "+line)
		if line == "*" {
			reply("501 5.0.0 Negotiation cancelled\r\n")
			return ""
		}
		if response, err = goSMTPDecodeSASL(line); err != nil {
			reply("454 4.7.0 Invalid base64 data\r\n")
			return ""
		}
	}
	reply("235 2.0.0 Authentication succeeded\r\n")
	*didAuth = true
	return ""
}

// goSMTPDecodeSASL is go-smtp's decodeSASLResponse.
func goSMTPDecodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

func eofOf(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return io.EOF
	}
	return err
}

// readRawLine reads one line with its line ending, whatever the buffer
// size, as textproto does; at the end of the stream it returns what is
// left of an unfinished line along with the error.
func readRawLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		b, err := r.ReadSlice('\n')
		line = append(line, b...)
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

// goSMTPParse is go-smtp's parseCmd.
func goSMTPParse(line string) (cmd, arg string, ok bool) {
	line = strings.TrimRight(line, "\r\n")
	l := len(line)
	switch {
	case strings.HasPrefix(strings.ToUpper(line), "STARTTLS"):
		return "STARTTLS", "", true
	case l == 0:
		return "", "", true
	case l < 4, l == 5:
		return "", "", false
	case l == 4:
		return strings.ToUpper(line), "", true
	}
	if line[4] != ' ' {
		return "", "", false
	}
	return strings.ToUpper(line[0:4]), strings.TrimSpace(line[5:]), true
}

// throughWrapper is what go-smtp, reading with a buffer of bufSize, sees
// of in through the connection wrapper when the client's bytes arrive step
// bytes at a time; with direct, messages are read as the session reads
// them when the wrapper allows it.
func throughWrapper(in []byte, max, step, bufSize int, direct bool) []string {
	cfg := DefaultConfig()
	cfg.MaxLineLength = max
	c := &trackedConn{Conn: &chunkConn{data: append([]byte(nil), in...), step: step}, r: &Relay{cfg: cfg}}
	c.plain.Store(true)
	var d func() io.Reader
	if direct {
		d = func() io.Reader {
			if !c.takeDirect() {
				return nil
			}
			return newDirectData(c, 0)
		}
	}
	return goSMTPReader(bufio.NewReaderSize(c, bufSize), func(s string) { c.Write([]byte(s)) }, d, false, 0)
}

func modelOf(in []byte, max int) []string {
	return goSMTPReader(bufio.NewReader(bytes.NewReader(in)), func(string) {}, nil, true, max)
}

// Postfix's ORCPT for a UTF-8 recipient, grown by the rewrite by one byte
// per U+0410 less one: 100 of them make a line 99 bytes longer.
var longORCPT = "RCPT TO:<b@ok.example> ORCPT=rfc822;" + strings.Repeat("+D0+90", 100) + "@ok.example\r\n"

// chunkEndingWith is a BDAT LAST chunk of n bytes whose text ends with tail.
func chunkEndingWith(n int, tail string) string {
	return fmt.Sprintf("BDAT %d LAST\r\n", n) + strings.Repeat("x", n-len(tail)) + tail
}

// wrapperMax is the line limit the wrapper tests run with.
const wrapperMax = 1000

// wrapperSeeds are client streams that once broke the wrapper, or nearly.
var wrapperSeeds = []string{
	// A rewritten line longer than go-smtp's buffer, then a BDAT chunk:
	// the overflow was filtered twice and the chunk's end moved.
	longORCPT + chunkEndingWith(5000, "") + "QUIT\r\n",
	// ...with a chunk whose tail looks like a command the rewrite grows.
	longORCPT + chunkEndingWith(5000, "RCPT TO:<vvv@x> ORCPT=rfc822;"+strings.Repeat("+D0+90", 11)+"@x\r\n") + "QUIT\r\n",
	// A message pipelined with its DATA line, before the 354.
	"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nRCPT TO:<a@b> ORCPT=rfc822;+C3+A9@b\r\n.\r\nNOOP\r\n",
	// Data pipelined after a refused DATA is read as commands, as go-smtp does.
	"DATA x\r\nRCPT TO:<a@b> ORCPT=rfc822;+C3+A9@b\r\n",
	// Smuggling shapes after DATA.
	"DATA\r\nhello\n.\r\nMAIL FROM:<e@x>\r\n.\r\n", "DATA\r\nhello\r\r\n.\r\nRSET\r\n.\r\n",
	// STARTTLS with a command injected behind it, and go-smtp's
	// upper-casing of a long s.
	"STARTTLS\r\nMAIL FROM:<injected@x>\r\n", "\u017fTARTTLS\r\nNOOP\r\n",
	// Line limits: over, just within, unfinished.
	"NOOP " + strings.Repeat("a", wrapperMax) + "\r\n", "NOOP " + strings.Repeat("a", wrapperMax-5) + "\r\nQUIT\r\n",
	"NOOP\r\nNOOP " + strings.Repeat("a", wrapperMax),
	// Bare LF lines, lower case, BDAT that does not parse.
	"data\nx\n.\n.\r\n", "BDAT 3\nabcBDAT x\r\nBDAT 2 LAST\r\nxy",
}

// authSeeds are AUTH dialogues: after a 334 the next line is a SASL
// response, never a command. The first two once broke the wrapper (a
// response "BDAT n" passed n bytes of commands as a chunk).
var authSeeds = []string{
	"EHLO c\r\nAUTH LOGIN\r\nBDAT 4294967295\r\nNOOP " + strings.Repeat("a", 2*wrapperMax) + "\r\nQUIT\r\n",
	"EHLO c\r\nAUTH LOGIN\r\nBDAT 60\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: start\r\n\r\nfirst\r\nsecond\r\n.\r\nQUIT\r\n",
	// PLAIN with an initial response (app:s3cret), then AUTH refused as
	// already done: its next line is a command again.
	"EHLO c\r\nAUTH PLAIN AGFwcABzM2NyZXQ=\r\nAUTH LOGIN\r\nBDAT 5\r\nNOOP\r\nQUIT\r\n",
	// PLAIN without one: 334, then the response, all pipelined with a message.
	"EHLO c\r\nAUTH PLAIN\r\nAGFwcABzM2NyZXQ=\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
	// Cancelled with "*"; LOGIN's two responses, the second one a command's shape.
	"EHLO c\r\nAUTH LOGIN\r\n*\r\nBDAT 3\r\nabcNOOP\r\n",
	"EHLO c\r\nAUTH LOGIN\r\nYXBw\r\nBDAT 3\r\nabcd\r\n",
	"EHLO c\r\nauth login YXBw\r\nczNjcmV0\r\nBDAT 2 LAST\r\nxyNOOP\r\n",
	"EHLO c\r\nAUTH LOGIN =\r\nBDAT 1\r\n\r\nx\r\n",
	// Refused without a 334: before EHLO, no mechanism, an unknown one, a
	// bad initial response.
	"AUTH LOGIN\r\nBDAT 3\r\nabcNOOP\r\n", "HELO c\r\nAUTH\r\nBDAT 3\r\nabc\r\n",
	"EHLO c\r\nAUTH CRAM-MD5\r\nBDAT 3\r\nabc\r\n", "EHLO c\r\nAUTH PLAIN !!\r\nBDAT 3\r\nabc\r\n",
	// Responses shaped like DATA, STARTTLS and a UTF-8 ORCPT.
	"EHLO c\r\nAUTH LOGIN\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n",
	"EHLO c\r\nAUTH PLAIN\r\nSTARTTLS\r\nNOOP\r\n",
	"EHLO c\r\nAUTH LOGIN\r\nRCPT TO:<a@b> ORCPT=rfc822;+C3+A9@b\r\nNOOP\r\n",
	// A response at the line limit, and one byte over.
	"EHLO c\r\nAUTH LOGIN\r\n" + strings.Repeat("A", wrapperMax) + "\r\nNOOP\r\n",
	"EHLO c\r\nAUTH LOGIN\r\n" + strings.Repeat("A", wrapperMax+1) + "\r\nNOOP\r\n",
}

// FuzzConnWrapper holds the connection wrapper to go-smtp's reading of the
// same stream: whatever the bytes and however they are split by the
// network or go-smtp's buffer, go-smtp must see through the wrapper
// exactly the commands, messages and chunks it would see without it, with
// only command lines' ORCPT translated. A difference is a message rewritten
// or a command smuggled. Run it with -fuzzminimizetime=5s: minimising a
// find from the long seeds takes the default minute, and shows as 0 execs/s.
func FuzzConnWrapper(f *testing.F) {
	for _, s := range append(wrapperSeeds, authSeeds...) {
		f.Add([]byte(s), uint8(7), uint8(0), true)
		f.Add([]byte(s), uint8(255), uint8(255), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, step, buf uint8, direct bool) {
		var want, got []string
		done := make(chan bool)
		go func() {
			want = modelOf(in, wrapperMax)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			panic(fmt.Sprintf("MODEL HANG %q %d %d %v", in, step, buf, direct))
		}
		done = make(chan bool)
		go func() {
			got = throughWrapper(in, wrapperMax, int(step)+1, 16+int(buf)*16, direct)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			panic(fmt.Sprintf("WRAPPER HANG %q %d %d %v", in, step, buf, direct))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("%q read %d bytes at a time, go-smtp's buffer %d, direct %v:\n got %q\nwant %q",
				in, int(step)+1, 16+int(buf)*16, direct, got, want)
		}
	})
}

// The same, on the seeds, for every way of splitting them.
func TestConnWrapperSeeds(t *testing.T) {
	for _, s := range append(wrapperSeeds, authSeeds...) {
		want := modelOf([]byte(s), wrapperMax)
		for _, step := range []int{1, 2, 3, 7, 64, 1000, 1 << 16} {
			for _, buf := range []int{16, 100, 4096} {
				for _, direct := range []bool{false, true} {
					got := throughWrapper([]byte(s), wrapperMax, step, buf, direct)
					if strings.Join(got, "\n") != strings.Join(want, "\n") {
						t.Fatalf("%.80q... read %d at a time, buffer %d, direct %v:\n got %q\nwant %q", s, step, buf, direct, got, want)
					}
				}
			}
		}
	}
}
