package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

const rewriteUsage = `usage: pixelrelay rewrite [--action strip|keep] [--recipient ADDR]... [--tenant T]
                          [--report FILE|-] [--rules FILE] < message.eml > out.eml

Reads one RFC 5322 message on stdin and writes it to stdout with its
open-tracking pixels stripped (--action strip, the default) or untouched
(--action keep, for a dry run with --report). Headers, attachments and every
part without a tracker are copied byte for byte; LF input gives LF output.

--action auto looks the single --recipient's open_tracking consent up in the
store (--db FILE, or --server URL with PIXELRELAY_API_TOKEN) and keeps the
trackers only for an explicit grant; any lookup failure strips. This is
Postfix pipe mode (see docs/postfix.md).

exit codes: 0 done (also when nothing changed or malformed MIME was passed
through), 1 usage or configuration error, 2 the input could not be read or
the output could not be written.

flags:`

func runRewrite(env *cmdEnv, args []string) int {
	fs := newFlagSet("rewrite", rewriteUsage, env.stderr)
	action := fs.String("action", "strip", "what to do with trackers: strip or keep (beacon and auto need --db or --server)")
	var rcpts stringList
	fs.Var(&rcpts, "recipient", "the recipient's address, which enables the recipient-identifier signal (repeatable)")
	tenant := fs.String("tenant", "default", "consent tenant (used with --action auto)")
	reportPath := fs.String("report", "", "write the findings as one JSON object to FILE (- for stderr)")
	rulesPath := fs.String("rules", "", "extra tracker rules file, layered over the built-in rules")
	beaconBase := fs.String("beacon-base", "", "base URL of the delivery-only beacon (with --action beacon)")
	fs.String("campaign", "", "campaign name for beacons")
	store := addStoreFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 1
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: unexpected argument %q; the message is read from stdin\n", pos[0])
		return 1
	}
	var act rewrite.Action
	switch *action {
	case "strip":
		act = rewrite.Strip
	case "keep":
		act = rewrite.Keep
	case "auto":
		if len(rcpts) != 1 {
			fmt.Fprintln(env.stderr, "pixelrelay rewrite: --action auto needs exactly one --recipient (one recipient per run, as Postfix's pipe delivers with _destination_recipient_limit = 1)")
			return 1
		}
		target, err := store.resolve(env)
		if err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay rewrite: %v\n", err)
			return 1
		}
		act = autoAction(env, target, *tenant, rcpts[0])
	case "beacon":
		need := "--db or --server"
		if *beaconBase == "" {
			need += " and --beacon-base"
		}
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: --action beacon needs %s\n", need)
		return 1
	default:
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: unknown --action %q; want strip, keep, beacon or auto\n", *action)
		return 1
	}
	eng, err := newRewriteEngine(*rulesPath)
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: %v\n", err)
		return 1
	}
	var reportW io.Writer
	var reportFile *os.File
	switch *reportPath {
	case "":
	case "-":
		reportW = env.stderr
	default:
		// Opened before the message is read, so that a bad path is a usage
		// error and not a half-done run.
		f, err := os.Create(*reportPath)
		if err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay rewrite: cannot write the report: %v\n", err)
			return 1
		}
		reportFile, reportW = f, f
	}
	out := bufio.NewWriterSize(env.stdout, 64<<10)
	rep, err := eng.Rewrite(out, env.stdin, rewrite.Decision{Action: act, Recipients: rcpts})
	if err == nil {
		err = flushErr(out.Flush())
	}
	code := 0
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: %v\n", err)
		code = 2
	}
	if reportW != nil {
		rec := messageRecord{
			Source:       "-",
			MessageID:    rep.MessageID,
			Trackers:     rep.Trackers,
			Problems:     rep.Problems,
			Changed:      &rep.Changed,
			DroppedParts: rep.DroppedParts,
			RulesVersion: eng.RulesVersion(),
		}
		if err != nil {
			rec.Error = err.Error()
		}
		if werr := json.NewEncoder(reportW).Encode(rec); werr != nil {
			fmt.Fprintf(env.stderr, "pixelrelay rewrite: writing the report: %v\n", werr)
			if code == 0 {
				code = 2
			}
		}
		if reportFile != nil {
			if cerr := reportFile.Close(); cerr != nil && code == 0 {
				fmt.Fprintf(env.stderr, "pixelrelay rewrite: writing the report: %v\n", cerr)
				code = 2
			}
		}
	}
	return code
}

func flushErr(err error) error {
	if err != nil {
		return &rewrite.IOError{Op: "write", Err: err}
	}
	return nil
}

// newRewriteEngine builds the engine shared by rewrite and scan: the
// built-in rules, with a user rules file layered over them.
func newRewriteEngine(rulesPath string) (*rewrite.Engine, error) {
	opts := rewrite.Options{}
	if rulesPath != "" {
		f, err := os.Open(rulesPath)
		if err != nil {
			return nil, fmt.Errorf("cannot read the rules file: %w", err)
		}
		defer f.Close()
		r, err := rewrite.ParseRules(f, rulesPath)
		if err != nil {
			return nil, fmt.Errorf("invalid rules file:\n%w", err)
		}
		opts.Rules = r
	}
	return rewrite.New(opts)
}

// messageRecord is one line of scan --json and the rewrite --report object
// (CONTRACTS.md pins source, message_id, trackers and error; the rest are
// additions).
type messageRecord struct {
	Source       string            `json:"source"`
	MessageID    string            `json:"message_id"`
	Trackers     []rewrite.Finding `json:"trackers"`
	Error        string            `json:"error,omitempty"`
	Problems     []string          `json:"problems,omitempty"`
	Changed      *bool             `json:"changed,omitempty"`
	DroppedParts []string          `json:"dropped_parts,omitempty"`
	RulesVersion string            `json:"rules_version,omitempty"`
}

// autoAction is the per-recipient decision of pipe mode: keep the trackers
// only for an explicit grant. Any failure to look the consent up strips
// (fail closed) and the message still goes out, so a pipe delivery never
// fails for it; the reason is on stderr, which Postfix logs.
func autoAction(env *cmdEnv, target storeTarget, tenant, rcpt string) rewrite.Action {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		st  consent.State
		err error
	)
	if target.Remote() {
		st, err = target.Client().Lookup(ctx, tenant, rcpt, consent.PurposeOpenTracking)
	} else {
		var s *consent.Store
		if s, err = openStore(env, target, true); err == nil {
			st, err = s.Lookup(ctx, tenant, rcpt, consent.PurposeOpenTracking)
			s.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: consent lookup failed, stripping (fail closed): %v\n", err)
		return rewrite.Strip
	}
	if st == consent.Granted {
		return rewrite.Keep
	}
	return rewrite.Strip
}
