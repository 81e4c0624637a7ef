package relay

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

var update = flag.Bool("update", false, "rewrite the .verify golden files of the dialogue tests")

// TestDialogs plays every ../testdata/dialogs/*.cmy script against an
// in-process relay with a real consent store, the real rewrite engine and
// a real SMTP upstream on loopback, then compares what that upstream
// received, byte for byte, with the script's .verify file.
//
// Script lines (chasquid's .cmy style):
//
//	c -> LINE          send LINE and CRLF
//	c ~> "GO STRING"   send raw bytes (Go-quoted, for bare CR/LF)
//	c <~ PREFIX        read one reply; its last line must start with PREFIX
//	c <- LINE          read one reply; its last line must be LINE
//	c send FILE        send FILE (in ../testdata/messages) as DATA: CRLF, dot-stuffed, then "."
//	consent ADDR STATE set consent for open_tracking (granted, denied, withdrawn)
//	upstream PHASE [rcpt=ADDR] [times=N] [delay=DUR] (drop | CODE X.Y.Z TEXT)
//	upstream down | upstream up
//	expect-upstream N  the upstream has received exactly N messages so far
func TestDialogs(t *testing.T) {
	scripts, _ := filepath.Glob("../testdata/dialogs/*.cmy")
	if len(scripts) == 0 {
		t.Fatal("no dialogue scripts in ../testdata/dialogs")
	}
	for _, path := range scripts {
		name := strings.TrimSuffix(filepath.Base(path), ".cmy")
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.play(path)
			got := relaytest.Render(h.up.Messages())
			verify := strings.TrimSuffix(path, ".cmy") + ".verify"
			if *update {
				if err := os.WriteFile(verify, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(verify)
			if err != nil {
				t.Fatalf("%v (run go test ./relay -run TestDialogs -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("upstream bytes differ from %s:\n%s", verify, firstDiff(want, got))
			}
		})
	}
}

func (h *harness) play(path string) {
	t := h.t
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		where := fmt.Sprintf("%s:%d", filepath.Base(path), n+1)
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		switch {
		case strings.HasPrefix(line, "c -> "):
			fmt.Fprintf(conn, "%s\r\n", line[5:])
		case strings.HasPrefix(line, "c ~> "):
			raw, err := strconv.Unquote(line[5:])
			if err != nil {
				t.Fatalf("%s: bad quoted string: %v", where, err)
			}
			conn.Write([]byte(raw))
		case strings.HasPrefix(line, "c <~ "), strings.HasPrefix(line, "c <- "):
			reply, err := readReply(r)
			if err != nil {
				t.Fatalf("%s: reading reply: %v", where, err)
			}
			last := reply[len(reply)-1]
			want := line[5:]
			if line[2:4] == "<-" && last != want || line[2:4] == "<~" && !strings.HasPrefix(last, want) {
				t.Fatalf("%s: got reply %q, want %q", where, strings.Join(reply, " | "), want)
			}
		case strings.HasPrefix(line, "c send "):
			msg, err := os.ReadFile(filepath.Join("../testdata/messages", strings.TrimSpace(line[7:])))
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			conn.Write(dotStuff(msg))
		case strings.HasPrefix(line, "consent "):
			f := strings.Fields(line)
			h.setConsent(f[1], f[2])
		case strings.HasPrefix(line, "upstream "):
			h.upstreamDirective(where, strings.Fields(line)[1:])
		case strings.HasPrefix(line, "expect-upstream "):
			want, _ := strconv.Atoi(strings.TrimSpace(line[len("expect-upstream "):]))
			if got := len(h.up.Messages()); got != want {
				t.Fatalf("%s: upstream has %d messages, want %d", where, got, want)
			}
		default:
			t.Fatalf("%s: unknown script line %q", where, line)
		}
	}
}

func (h *harness) upstreamDirective(where string, f []string) {
	switch f[0] {
	case "down":
		h.up.Down()
		return
	case "up":
		h.up.Up()
		return
	}
	ft := relaytest.Fault{Phase: f[0]}
	rest := f[1:]
	for len(rest) > 0 {
		k, v, ok := strings.Cut(rest[0], "=")
		if !ok {
			break
		}
		switch k {
		case "rcpt":
			ft.Rcpt = v
		case "times":
			ft.Times, _ = strconv.Atoi(v)
		case "delay":
			ft.Delay, _ = time.ParseDuration(v)
		default:
			h.t.Fatalf("%s: unknown upstream option %q", where, k)
		}
		rest = rest[1:]
	}
	switch {
	case len(rest) == 1 && rest[0] == "drop":
		ft.Drop = true
	case len(rest) >= 2:
		code, _ := strconv.Atoi(rest[0])
		var enh smtp.EnhancedCode
		fmt.Sscanf(rest[1], "%d.%d.%d", &enh[0], &enh[1], &enh[2])
		ft.Err = &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: strings.Join(rest[2:], " ")}
	case len(rest) == 0 && ft.Delay > 0:
	default:
		h.t.Fatalf("%s: upstream fault needs drop or CODE X.Y.Z TEXT", where)
	}
	h.up.Inject(ft)
}

// readReply reads one possibly multi-line SMTP reply.
func readReply(r *bufio.Reader) ([]string, error) {
	var lines []string
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return append(lines, strings.TrimRight(l, "\r\n")), err
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return lines, nil
		}
	}
}

// dotStuff turns a message file into DATA: LF or CRLF lines become CRLF,
// leading dots are doubled, and the end-of-data line follows.
func dotStuff(msg []byte) []byte {
	msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(msg, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		l = bytes.TrimSuffix(l, []byte("\n"))
		if bytes.HasPrefix(l, []byte(".")) {
			b.WriteByte('.')
		}
		b.Write(l)
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

func firstDiff(want, got []byte) string {
	wl := strings.Split(string(want), "\n")
	gl := strings.Split(string(got), "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want %q\n  got  %q", i+1, w, g)
		}
	}
	return "(no line differs; trailing bytes?)"
}
