package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// outbox is the Upstream used when none is configured: every copy becomes
// an .eml file, with its envelope beside it in a .json file, so a newcomer
// can run the relay, send a mail with any client and look at the result.
type outbox struct {
	dir string
	seq atomic.Uint64
}

// NewOutbox returns an Upstream that writes into dir, creating it.
func NewOutbox(dir string) (Upstream, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	return &outbox{dir: dir}, nil
}

func (o *outbox) Begin(ctx context.Context, from string, opts *smtp.MailOptions) (Tx, error) {
	return &outboxTx{o: o, from: from}, nil
}

func (o *outbox) Check(ctx context.Context) error {
	st, err := os.Stat(o.dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", o.dir)
	}
	return nil
}

func (o *outbox) Close() error { return nil }

type outboxTx struct {
	o     *outbox
	from  string
	rcpts []string
}

func (t *outboxTx) Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error {
	t.rcpts = append(t.rcpts, to)
	return nil
}

func (t *outboxTx) Data(ctx context.Context, write func(io.Writer) error) (Reply, error) {
	name := fmt.Sprintf("%s-%06d", time.Now().UTC().Format("20060102T150405.000Z"), t.o.seq.Add(1))
	tmp, err := os.CreateTemp(t.o.dir, ".tmp-*")
	if err != nil {
		return Reply{}, &UpstreamError{Phase: "data", Err: err}
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return Reply{}, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return Reply{}, &UpstreamError{Phase: "data", Err: err}
	}
	if err := tmp.Close(); err != nil {
		return Reply{}, &UpstreamError{Phase: "data", Err: err}
	}
	env, _ := json.MarshalIndent(map[string]any{"mail_from": t.from, "rcpt_to": t.rcpts}, "", "  ")
	if err := os.WriteFile(filepath.Join(t.o.dir, name+".json"), append(env, '\n'), 0o640); err != nil {
		return Reply{}, &UpstreamError{Phase: "data", Err: err}
	}
	if err := os.Rename(tmp.Name(), filepath.Join(t.o.dir, name+".eml")); err != nil {
		return Reply{}, &UpstreamError{Phase: "data", Err: err}
	}
	return Reply{Code: 250, Text: "written to " + filepath.Join(t.o.dir, name+".eml"), QueueID: name}, nil
}

func (t *outboxTx) Abort() {}
