package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/mail"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pixelrelay/pixelrelay/beacon"
	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/relay"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

const rewriteUsage = `usage: pixelrelay rewrite [--action strip|keep|beacon|auto] [--recipient ADDR]... [--tenant T]
                          [--report FILE|-] [--rules FILE] [--config FILE] < message.eml > out.eml

Reads one RFC 5322 message on stdin and writes it to stdout with its
open-tracking pixels stripped (--action strip, the default) or untouched
(--action keep, for a dry run with --report). Headers, attachments and every
part without a tracker are copied byte for byte; LF input gives LF output.

--action beacon replaces the first tracker with a delivery-only campaign
beacon (--beacon-base) once the campaign has reached --beacon-min-batch
recipients today, counted in the store (--db or --server); below that the
trackers are stripped. It looks no consent up: run it only for recipients
who have not consented. The campaign is --campaign, else the first of
serve's campaign_headers present in the message, else the domain of
--sender (the envelope sender; Postfix's pipe passes it as ${sender}),
else the domain of the From address.

--action auto looks the single --recipient's open_tracking consent up in the
store (--db FILE, or --server URL with PIXELRELAY_API_TOKEN) and keeps the
trackers only for an explicit grant; any lookup failure strips. This is
Postfix pipe mode (see docs/postfix.md).

--config FILE (or PIXELRELAY_CONFIG) is serve's configuration; rewrite reads
db, purposes, ignore_plus_tag, beacon_base, beacon_min_batch and
campaign_headers from it. PIXELRELAY_* variables override the file and flags
override both, as in serve. With a beacon base set, pixelrelay's own beacons
are never judged trackers.

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
	beaconBase := fs.String("beacon-base", "", "public base URL of the delivery-only beacon (or PIXELRELAY_BEACON_BASE, or beacon_base in --config)")
	campaign := fs.String("campaign", "", "campaign key for the beacon (default: the first campaign header present, else the sender's domain)")
	sender := fs.String("sender", "", "envelope sender, as Postfix's pipe passes ${sender}; its domain names the campaign of a message without campaign header (default: the From address)")
	minBatch := fs.Int("beacon-min-batch", 50, "non-consenting recipients a campaign needs per day before it gets beacons (or PIXELRELAY_BEACON_MIN_BATCH, or beacon_min_batch in --config)")
	store := addStoreFlags(fs)
	pos, code, stop := parseCommand(fs, args)
	if stop {
		return code
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: unexpected argument %q; the message is read from stdin\n", pos[0])
		return 1
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fc, err := loadFilterConfig(env, store.config)
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: %v\n", err)
		return 1
	}
	if !set["beacon-base"] {
		*beaconBase = fc.BeaconBase
	}
	if !set["beacon-min-batch"] {
		*minBatch = fc.BeaconMinBatch
	}
	// Everything that can be wrong with the command line is checked before
	// anything has an effect: a run that exits 1 sends no message, so it
	// must not have counted its recipient toward a campaign's batch.
	var target storeTarget
	switch *action {
	case "strip", "keep":
	case "auto":
		if len(rcpts) != 1 {
			fmt.Fprintln(env.stderr, "pixelrelay rewrite: --action auto needs exactly one --recipient (one recipient per run, as Postfix's pipe delivers with _destination_recipient_limit = 1)")
			return 1
		}
	case "beacon":
		if *beaconBase == "" {
			fmt.Fprintln(env.stderr, "pixelrelay rewrite: --action beacon needs --beacon-base URL (or PIXELRELAY_BEACON_BASE, or beacon_base in --config), the public URL of the beacon listener")
			return 1
		}
	default:
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: unknown --action %q; want strip, keep, beacon or auto\n", *action)
		return 1
	}
	if *action == "auto" || *action == "beacon" {
		if target, err = store.resolve(env); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay rewrite: %v\n", err)
			return 1
		}
	}
	eng, err := newRewriteEngine(*rulesPath, *beaconBase)
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

	var (
		act       rewrite.Action
		beaconURL string
		src       io.Reader = env.stdin
		rep       rewrite.Report
	)
	switch *action {
	case "strip":
		act = rewrite.Strip
	case "keep":
		act = rewrite.Keep
	case "auto":
		act = autoAction(env, target, *tenant, rcpts[0])
	case "beacon":
		// The campaign may come from the header, so the message is read
		// first; a filter's message fits in memory like any MTA's does.
		input, rerr := io.ReadAll(env.stdin)
		if rerr != nil {
			err = &rewrite.IOError{Op: "read", Err: rerr}
			break
		}
		src = bytes.NewReader(input)
		if *campaign == "" {
			*campaign = campaignOf(input, fc.CampaignHeaders, *sender, set["sender"])
		}
		act, beaconURL = beaconAction(env, target, *tenant, *campaign, *beaconBase, *minBatch, len(rcpts))
	}
	if err == nil {
		out := bufio.NewWriterSize(env.stdout, 64<<10)
		rep, err = eng.Rewrite(out, src, rewrite.Decision{Action: act, Recipients: rcpts, BeaconURL: beaconURL})
		if err == nil {
			err = flushErr(out.Flush())
		}
	}
	code = 0
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
		if rec.Trackers == nil {
			rec.Trackers = []rewrite.Finding{} // the input could not be read
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
//
// beaconBase, when set, is pixelrelay's own public beacon URL, which is
// never a tracker: a second pass over a beaconed message keeps the beacon.
func newRewriteEngine(rulesPath, beaconBase string) (*rewrite.Engine, error) {
	opts := rewrite.Options{}
	if beaconBase != "" {
		// Derived from beacon.JoinURL, which writes the relay's beacon
		// URLs, so that the two can never disagree on a base's slashes.
		u := beacon.JoinURL(beaconBase, "")
		opts.OwnURLPrefixes = []string{u[:strings.LastIndex(u, "/")+1]}
	}
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
		if s, err = openStore(env, target, dbRead); err == nil {
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

// campaignOf names a message's campaign as serve does: the first campaign
// header present, else the domain of the envelope sender. A filter learns
// the envelope sender only from --sender (senderSet); without it the From
// address stands in, which for bulk mail usually shares its domain.
func campaignOf(msg []byte, headers []string, sender string, senderSet bool) string {
	h, _ := textproto.NewReader(bufio.NewReader(bytes.NewReader(msg))).ReadMIMEHeader()
	if !senderSet {
		sender = fromAddress(h.Get("From"))
	}
	return relay.CampaignKey(h, headers, sender)
}

// fromAddress is the first address of a From field, or "" when there is
// none; a field net/mail rejects still yields its <addr-spec>.
func fromAddress(v string) string {
	if list, err := mail.ParseAddressList(v); err == nil && len(list) > 0 {
		return list[0].Address
	}
	if i := strings.LastIndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return strings.TrimSpace(v[i+1 : i+j])
		}
	}
	return strings.TrimSpace(v)
}

// filterConfig is the part of serve's configuration that rewrite and scan
// share with it. Like the store's part (storeConfig), it is read leniently:
// the rest of the file is serve's business, and a filter must not fail
// over a listener or TLS setting it never uses.
type filterConfig struct {
	BeaconBase      string   `yaml:"beacon_base"`
	BeaconMinBatch  int      `yaml:"beacon_min_batch"`
	CampaignHeaders []string `yaml:"campaign_headers"`
}

// loadFilterConfig layers serve's defaults, the config file (path, else
// PIXELRELAY_CONFIG) and the PIXELRELAY_* variables, in serve's order;
// the caller lets flags given on the command line win over the result.
func loadFilterConfig(env *cmdEnv, path string) (filterConfig, error) {
	def := relay.DefaultConfig()
	fc := filterConfig{BeaconBase: def.BeaconBase, BeaconMinBatch: def.BeaconMinBatch, CampaignHeaders: def.CampaignHeaders}
	if path == "" {
		path = env.getenv("PIXELRELAY_CONFIG")
	}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return fc, fmt.Errorf("config file: %w", err)
		}
		if err := yaml.Unmarshal(data, &fc); err != nil {
			return fc, fmt.Errorf("config file %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
		}
	}
	if v := env.getenv(envName("beacon_base")); v != "" {
		fc.BeaconBase = v
	}
	if v := env.getenv(envName("campaign_headers")); v != "" {
		fc.CampaignHeaders = splitList(v)
	}
	if v := env.getenv(envName("beacon_min_batch")); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fc, fmt.Errorf("%s=%q is not a whole number", envName("beacon_min_batch"), v)
		}
		fc.BeaconMinBatch = n
	}
	return fc, nil
}

// beaconAction decides a filter run's beacon: the campaign's count for the
// day goes up by this message's recipients (at least one), and below the
// minimum batch, or on any error, the trackers are stripped instead.
func beaconAction(env *cmdEnv, target storeTarget, tenant, campaign, base string, minBatch, rcpts int) (rewrite.Action, string) {
	var (
		d    beaconDecider
		done func() error
		err  error
		st   *consent.Store
	)
	if target.Remote() {
		d, done, err = newBeaconDecider(env, nil, target.Server, base, minBatch)
	} else if st, err = openStore(env, target, dbCreate); err == nil {
		defer st.Close()
		d, done, err = newBeaconDecider(env, st.DB(), "", base, minBatch)
	}
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: beacon unavailable, stripping: %v\n", err)
		return rewrite.Strip, ""
	}
	url, ok, err := d.Decide(tenant, campaign, max(1, rcpts), time.Now())
	if derr := done(); err == nil {
		err = derr
	}
	switch {
	case err != nil:
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: beacon decision failed, stripping: %v\n", err)
		return rewrite.Strip, ""
	case !ok:
		fmt.Fprintf(env.stderr, "pixelrelay rewrite: campaign %q has not reached the minimum batch of %d recipients today; stripped\n", campaign, minBatch)
		return rewrite.Strip, ""
	}
	return rewrite.Beacon, url
}
