package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/pixelrelay/pixelrelay/beacon"
)

const beaconUsage = `usage: pixelrelay beacon stats [--json] [--campaign C] [--tenant T|*] [--from YYYY-MM-DD] [--to YYYY-MM-DD]
                         [--db FILE | --server URL]
       pixelrelay beacon keys [--json] [--db FILE | --server URL]
       pixelrelay beacon rotate-key [--revoke-old] [--db FILE | --server URL]

Delivery-only beacons count image loads per campaign and UTC day; they never
identify a recipient. stats shows, per tenant, day and campaign:
  RECIPIENTS   non-consenting recipients counted toward the minimum batch
  WITH BEACON  those whose copies went out once the batch was reached
  IMAGE LOADS  image loads, including privacy proxies such as Apple Mail
               Privacy Protection; a load is not an open, nor a person
--tenant defaults to "default"; --tenant '*' shows every tenant.

rotate-key adds a signing key that signs from then on; beacons already sent
keep counting until their tokens expire. --revoke-old deletes every other key
at once (for a leaked key): beacons already sent stop counting. keys lists the
keys without their secrets. See docs/beacon.md.

With --server URL (or PIXELRELAY_SERVER) the command goes through a running
server's admin API, with the token from PIXELRELAY_API_TOKEN; otherwise it
opens --db FILE (or PIXELRELAY_DB, or the db key of serve's --config file;
default ./pixelrelay.db), which fails at once while a server holds it.

exit codes: 0 done, 1 usage, configuration, database or server error.`

func runBeacon(env *cmdEnv, args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(env.stderr, beaconUsage)
		return 1
	}
	switch args[0] {
	case "stats":
		return runBeaconStats(env, args[1:])
	case "keys":
		return runBeaconKeys(env, args[1:])
	case "rotate-key":
		return runBeaconRotate(env, args[1:])
	case "-h", "--help", "help":
		fmt.Fprintln(env.stdout, beaconUsage)
		return 0
	}
	fmt.Fprintf(env.stderr, "pixelrelay beacon: unknown subcommand %q; want stats, keys or rotate-key\n", args[0])
	return 1
}

// beaconAPI is what the beacon subcommands do, the same through a running
// server's admin API (*beacon.Client) as on the database file (beaconFile).
type beaconAPI interface {
	Stats(ctx context.Context, f beacon.Filter) ([]beacon.Stat, error)
	Keys(ctx context.Context) ([]beacon.KeyInfo, error)
	RotateKey(ctx context.Context, revokeOld bool) (beacon.KeyInfo, error)
}

// beaconFile is the database file as a beaconAPI, for when no server runs.
type beaconFile struct{ db *bbolt.DB }

func (f beaconFile) Stats(_ context.Context, flt beacon.Filter) ([]beacon.Stat, error) {
	return beacon.ReadStats(f.db, flt)
}

func (f beaconFile) Keys(context.Context) ([]beacon.KeyInfo, error) { return beacon.ListKeys(f.db) }

// RotateKey on the file: a server started later signs with the new key.
func (f beaconFile) RotateKey(_ context.Context, revokeOld bool) (beacon.KeyInfo, error) {
	return beacon.RotateKey(f.db, beacon.RotateOptions{RevokeOld: revokeOld})
}

// beaconCommand is one beacon subcommand's flag set, with the database
// flags every command that reaches the store shares (dbopen.go).
type beaconCommand struct {
	env   *cmdEnv
	name  string
	fs    *flag.FlagSet
	store *storeFlags
}

func newBeaconCommand(env *cmdEnv, name string) *beaconCommand {
	fs := newFlagSet(name, beaconUsage, env.stderr)
	return &beaconCommand{env: env, name: name, fs: fs, store: addStoreFlags(fs)}
}

// parse parses args. ok is false when the command is over, with code as
// its exit code.
func (c *beaconCommand) parse(args []string) (code int, ok bool) {
	pos, code, stop := parseCommand(c.fs, args)
	if stop {
		return code, false
	}
	if len(pos) > 0 {
		fmt.Fprintf(c.env.stderr, "pixelrelay beacon %s: unexpected argument %q\n", c.name, pos[0])
		return 1, false
	}
	return 0, true
}

// run reaches the server or opens the database (with access), calls call,
// and closes the database before returning, so that the caller prints a
// result only once it is on disk. It returns the exit code.
func (c *beaconCommand) run(access dbAccess, call func(ctx context.Context, b beaconAPI) error) int {
	t, err := c.store.resolve(c.env)
	if err != nil {
		return c.fail(err)
	}
	ctx := context.Background()
	if t.Remote() {
		if err := call(ctx, &beacon.Client{Server: t.Server, Token: t.Token}); err != nil {
			return c.fail(err)
		}
		return 0
	}
	st, err := openStore(c.env, t, access)
	if err != nil {
		return c.fail(err)
	}
	err = call(ctx, beaconFile{st.DB()})
	if cerr := st.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s: %w", t.Path, cerr)
	}
	if err != nil {
		return c.fail(err)
	}
	return 0
}

// fail reports err; the in-use message is printed exactly as the contract
// pins it, without a prefix.
func (c *beaconCommand) fail(err error) int {
	return failDBErr(c.env.stderr, "beacon "+c.name, err)
}

func runBeaconStats(env *cmdEnv, args []string) int {
	c := newBeaconCommand(env, "stats")
	asJSON := c.fs.Bool("json", false, "print a JSON array, as GET /v1/beacons answers")
	campaign := c.fs.String("campaign", "", "only this campaign key")
	tenant := c.fs.String("tenant", "default", "only this tenant; * for every tenant")
	from := c.fs.String("from", "", "first UTC day, YYYY-MM-DD (inclusive)")
	to := c.fs.String("to", "", "last UTC day, YYYY-MM-DD (inclusive)")
	if code, ok := c.parse(args); !ok {
		return code
	}
	f, err := beacon.FilterFromQuery(func(k string) string {
		return map[string]string{"tenant": *tenant, "campaign": *campaign, "from": *from, "to": *to}[k]
	})
	if err != nil {
		return c.fail(err)
	}
	var stats []beacon.Stat
	if code := c.run(dbRead, func(ctx context.Context, b beaconAPI) (err error) {
		stats, err = b.Stats(ctx, f)
		return err
	}); code != 0 {
		return code
	}
	if *asJSON {
		if stats == nil {
			stats = []beacon.Stat{}
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetEscapeHTML(false)
		enc.Encode(stats)
		return 0
	}
	printStatsTable(env.stdout, stats)
	return 0
}

// printStatsTable prints the figures with their honest labels. Numbers are
// right-aligned so columns of counts compare at a glance.
func printStatsTable(w io.Writer, stats []beacon.Stat) {
	if len(stats) == 0 {
		fmt.Fprintln(w, "no beacon statistics match")
		return
	}
	head := []string{"TENANT", "DAY", "CAMPAIGN", "RECIPIENTS", "WITH BEACON", "IMAGE LOADS"}
	rows := [][]string{head}
	var totR, totB, totL uint64
	for _, s := range stats {
		rows = append(rows, []string{s.Tenant, s.Day, s.Campaign,
			fmt.Sprint(s.Recipients), fmt.Sprint(s.BeaconRecipients), fmt.Sprint(s.Loads)})
		totR, totB, totL = totR+s.Recipients, totB+s.BeaconRecipients, totL+s.Loads
	}
	if len(stats) > 1 {
		rows = append(rows, []string{"total", "", "", fmt.Sprint(totR), fmt.Sprint(totB), fmt.Sprint(totL)})
	}
	width := make([]int, len(head))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		var sb strings.Builder
		for i, c := range r {
			if i > 0 {
				sb.WriteString("  ")
			}
			if i >= 3 {
				fmt.Fprintf(&sb, "%*s", width[i], c)
			} else {
				fmt.Fprintf(&sb, "%-*s", width[i], c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "IMAGE LOADS are image loads, including privacy proxies such as Apple Mail Privacy Protection,")
	fmt.Fprintln(w, "which fetch images when mail arrives; a load is not an open and does not stand for a person.")
	fmt.Fprintln(w, "RECIPIENTS counts non-consenting recipients that day; WITH BEACON, those sent after the")
	fmt.Fprintln(w, "campaign reached the minimum batch.")
}

func runBeaconKeys(env *cmdEnv, args []string) int {
	c := newBeaconCommand(env, "keys")
	asJSON := c.fs.Bool("json", false, "print a JSON array")
	if code, ok := c.parse(args); !ok {
		return code
	}
	var keys []beacon.KeyInfo
	if code := c.run(dbRead, func(ctx context.Context, b beaconAPI) (err error) {
		keys, err = b.Keys(ctx)
		return err
	}); code != 0 {
		return code
	}
	if *asJSON {
		if keys == nil {
			keys = []beacon.KeyInfo{}
		}
		json.NewEncoder(env.stdout).Encode(keys)
		return 0
	}
	if len(keys) == 0 {
		fmt.Fprintln(env.stdout, "no beacon signing key yet; the server creates one on first use")
		return 0
	}
	fmt.Fprintf(env.stdout, "%-6s  %-20s  %-20s  %s\n", "ID", "CREATED", "RETIRED", "STATUS")
	for _, k := range keys {
		retired, status := "-", "signs and verifies"
		if k.Retired != nil {
			retired, status = k.Retired.UTC().Format(time.RFC3339), "verifies tokens it signed until they expire"
		}
		fmt.Fprintf(env.stdout, "%-6d  %-20s  %-20s  %s\n", k.ID, k.Created.UTC().Format(time.RFC3339), retired, status)
	}
	return 0
}

func runBeaconRotate(env *cmdEnv, args []string) int {
	c := newBeaconCommand(env, "rotate-key")
	revoke := c.fs.Bool("revoke-old", false, "delete every other key now (for a leaked key): beacons already sent stop counting")
	if code, ok := c.parse(args); !ok {
		return code
	}
	var ki beacon.KeyInfo
	// dbWrite: rotating the keys of a file a mistyped --db just created
	// would report success while the real database is untouched.
	if code := c.run(dbWrite, func(ctx context.Context, b beaconAPI) (err error) {
		ki, err = b.RotateKey(ctx, *revoke)
		return err
	}); code != 0 {
		return code
	}
	if *revoke {
		fmt.Fprintf(env.stdout, "key %d signs from now on; every older key is deleted, so beacons sent before now no longer count\n", ki.ID)
	} else {
		fmt.Fprintf(env.stdout, "key %d signs from now on; older keys keep verifying the beacons they signed until those expire\n", ki.ID)
	}
	return 0
}

// beaconDecider is the small-batch guard as `rewrite --action beacon` and
// the relay need it; *beacon.Beacons (local database) and *beacon.Client
// (--server) both provide it.
type beaconDecider interface {
	Decide(tenant, campaign string, recipients int, now time.Time) (url string, ok bool, err error)
}

// newBeaconDecider returns the guard for `rewrite --action beacon`: through
// the server's API when server is set (base, if set, replaces the server's
// beacon base in the URL), else from db, which the caller opened writable.
// done flushes the recipient count to db; call it before exiting.
func newBeaconDecider(env *cmdEnv, db *bbolt.DB, server, base string, minBatch int) (d beaconDecider, done func() error, err error) {
	if server != "" {
		token := env.getenv("PIXELRELAY_API_TOKEN")
		if token == "" {
			return nil, nil, errors.New("--server needs the admin API token in PIXELRELAY_API_TOKEN")
		}
		return &beacon.Client{Server: server, Token: token, Base: base}, func() error { return nil }, nil
	}
	if db == nil {
		return nil, nil, errors.New("--action beacon needs --db FILE or --server URL for the signing key and the batch counter")
	}
	// Only signs; never prunes: the filter does not know serve's
	// beacon_max_age and would delete keys a longer one still verifies with.
	b, err := beacon.Open(db, beacon.Options{Base: base, MinBatch: minBatch, KeepRetiredKeys: true})
	if err != nil {
		return nil, nil, err
	}
	return b, b.Close, nil
}
